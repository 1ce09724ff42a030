"""Searches: queue one for the service's workers (every replica joins it), list, and read one back
(per device its trials, what was measured, predicted and skipped, the front and the choice)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from host.api.deps import CallerScope, Ctx, Reader, require
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, ErrorBody, not_found
from host.campaign.references import Reach, ReferencePolicy, classify
from host.campaign.spec import (
    DeviceConstraintText,
    DeviceId,
    Format,
    ObjectiveName,
    ReferenceText,
    Task,
    check_known_devices,
    check_references,
    no_duplicates,
)
from host.search import SearchSpec, check_search_id, new_search_id, search_outcome
from host.search.space import PRECISION_CHOICES
from host.search.store import SearchStore
from host.security import Scope
from host.select import Constraint

router = APIRouter(tags=["searches"])

SEARCH_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$"
Precision = Literal[PRECISION_CHOICES]  # type: ignore[valid-type]


class SearchCreate(BaseModel):
    """A search's spec (host.search.SearchSpec); ``search_id`` names it (same spec: joins it).

    Each field's schema is the check behind it, so what the schema admits is accepted; what it
    cannot say is checked before anything is stored: what the spec names (403, 404), that its
    devices are known (404) and that a constraint's ``@DEVICE`` is one of them (422)."""

    model_config = ConfigDict(extra="forbid")

    model: ReferenceText = Field(examples=["builtin:digits_cnn"])
    data: ReferenceText = Field(examples=["builtin:digits"])
    devices: Annotated[tuple[DeviceId, ...], AfterValidator(no_duplicates)] = Field(
        min_length=1, max_length=64
    )
    constraints: tuple[DeviceConstraintText, ...] = Field(
        (), max_length=32, examples=[["accuracy_drop<=0.02", "latency_p90_ms<=5@pi-01"]],
        description="FIGURE OP NUMBER, optionally @DEVICE (one of the search's devices)",
    )  # fmt: skip
    objective: ObjectiveName = "min_latency"
    budget: int = Field(8, ge=1, le=1000, description="board measurements per device")
    trials: int = Field(24, ge=1, le=10_000, description="trials built on the host per device")
    sampler: Literal["tpe", "nsga2"] = "tpe"
    runtimes: Annotated[tuple[Format, ...], AfterValidator(no_duplicates)] = Field(
        ("tflite",), min_length=1, max_length=2
    )
    threads: Annotated[
        tuple[Annotated[int, Field(ge=1, le=256)], ...], AfterValidator(no_duplicates)
    ] = Field((), max_length=16, description="empty: 1 to the board's cores (at most 4)")
    precisions: Annotated[tuple[Precision, ...], AfterValidator(no_duplicates)] = Field(
        PRECISION_CHOICES, min_length=1, max_length=len(PRECISION_CHOICES)
    )
    max_prune: float = Field(0.7, ge=0, lt=1)
    lowrank: bool = True
    students: tuple[Annotated[float, Field(gt=0, lt=1)], ...] = Field(
        (), max_length=4, description="distilled student widths to try, e.g. [0.5]"
    )
    recovery_epochs: int = Field(2, ge=0, le=100)
    pretrain_epochs: int = Field(0, ge=0, le=1000)
    runs: int = Field(30, ge=1, le=100_000)
    eval_samples: int | None = Field(1000, ge=1, le=1_000_000)
    task: Task | None = None
    search_id: str | None = Field(None, pattern=SEARCH_ID_PATTERN)


class SearchSummary(BaseModel):
    search_id: str
    status: str
    model: str | None = None
    devices: list[str] = []
    trials: int = 0
    measured: int = 0
    error: str | None = None
    created: float
    updated: float


def _summary(ctx: Any, search_id: str) -> dict[str, Any]:
    sstore = SearchStore(ctx.store)
    info = sstore.get_search(search_id)
    if info is None:
        recent = ", ".join(s.search_id for s in sstore.list_searches()[-5:]) or "none yet"
        raise not_found("search", search_id, f"recent searches: {recent}")
    return {
        "search_id": info.search_id, "status": info.status, "model": info.spec.get("model"),
        "devices": list(info.spec.get("devices") or []),
        "trials": len(sstore.trials(search_id)), "measured": len(sstore.measurements(search_id)),
        "error": info.state.get("error"), "created": info.created, "updated": info.updated,
    }  # fmt: skip


@router.post("/searches", response_model=SearchSummary, status_code=202,
             responses={**ERRORS, **AUTH_ERRORS,
                        403: {"model": ErrorBody, "description": "the token is not valid, its "
                              "scope is too small, or the spec names what the service does not "
                              "let API callers name (a path on the server, a module not allowed)"},
                        404: {"model": ErrorBody, "description": "an unknown builtin, uploaded "
                              "artifact or device"},
                        409: {"model": ErrorBody, "description": "the search_id exists with "
                              "another spec"}})  # fmt: skip
def create_search(ctx: Ctx, body: SearchCreate, scope: CallerScope) -> dict[str, Any]:
    """Queue a search; every service replica joins it as a worker (their trials share one study
    per device, and no variant is measured twice). What it names follows the campaigns' rules:
    builtins and uploaded artifacts with an operate token, module code only under a prefix the
    operator allowed and with an admin token, never a path on the server. Everything is checked
    before anything is stored; a refused request stores nothing."""

    policy = ReferencePolicy.for_api(ctx.allowed_modules)
    references = [classify("model", body.model), classify("data", body.data)]
    for reference in references:  # before any module is imported
        policy.check(reference)
    if any(r.reach is Reach.MODULE for r in references):
        require(Scope.ADMIN, scope, "a search that names module code")
    check_references(references, policy, ctx.store, what="a search")
    bound = {c: Constraint.parse(c).device for c in body.constraints}
    known = {d.device_id for d in ctx.store.list_devices()}
    check_known_devices([*body.devices, *(d for d in bound.values() if d)], known)
    for text, device in bound.items():
        if device is not None and device not in body.devices:
            raise ApiError(
                422, "invalid_request",
                f"invalid request: body.constraints: {text!r} names device {device!r}, which is "
                f"not one of the search's devices ({', '.join(body.devices)})",
            )  # fmt: skip
    spec = SearchSpec(**body.model_dump(exclude={"search_id"}))
    search_id = check_search_id(body.search_id or new_search_id())
    sstore = SearchStore(ctx.store)
    existing = sstore.get_search(search_id)
    if existing is not None and existing.spec != spec.to_dict():
        raise ApiError(
            409, "conflict", f"search {search_id} exists with another spec; pick another search_id"
        )
    sstore.create_search(search_id, spec.to_dict())
    work = (ctx.work_root.parent / "searches" / search_id) if ctx.work_root else None
    sstore.update_search(
        search_id, state={"service": True, **({"work_dir": str(work)} if work else {})}
    )
    return _summary(ctx, search_id)


@router.get("/searches", response_model=list[SearchSummary], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def list_searches(ctx: Ctx) -> list[dict[str, Any]]:
    return [_summary(ctx, s.search_id) for s in SearchStore(ctx.store).list_searches()]


@router.get("/searches/{search_id}", dependencies=[Reader], responses={**ERRORS, **AUTH_ERRORS})
def get_search(ctx: Ctx, search_id: str) -> dict[str, Any]:
    """The search read back: per device its trials (measured, reused, skipped, failed, with
    why), measured against predicted, the front and the choice; the layers' sensitivity; the
    predictor's held-out error."""

    _summary(ctx, search_id)  # a 404 naming recent ones
    return search_outcome(ctx.store, search_id)
