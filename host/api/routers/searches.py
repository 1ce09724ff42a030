"""Searches: queue one for the service's workers (every replica joins it), list, and read one back
(per device its trials, what was measured, predicted and skipped, the front and the choice)."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter
from pydantic import BaseModel, Field

from host.api.deps import CallerScope, Ctx, Reader, require
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.campaign.references import Reach, ReferencePolicy, classify
from host.search import SearchSpec, check_search_id, new_search_id, search_outcome
from host.search.store import SearchStore
from host.security import Scope

router = APIRouter(tags=["searches"])


class SearchCreate(BaseModel):
    """A search's spec (host.search.SearchSpec); ``search_id`` names it (same spec: joins it)."""

    model_config = {"extra": "forbid"}

    model: str = Field(min_length=1, max_length=500)
    data: str = Field(min_length=1, max_length=500)
    devices: list[str] = Field(min_length=1, max_length=64)
    constraints: list[str] = Field(default_factory=list, max_length=32)
    objective: str = "min_latency"
    budget: int = Field(8, ge=1, le=1000)
    trials: int = Field(24, ge=1, le=10_000)
    sampler: Literal["tpe", "nsga2"] = "tpe"
    runtimes: list[str] = Field(default_factory=lambda: ["tflite"], max_length=4)
    threads: list[int] = Field(default_factory=list, max_length=16)
    precisions: list[str] = Field(
        default_factory=lambda: ["fp32", "fp16", "int8_dynamic", "int8", "int8_mixed"], max_length=8
    )
    max_prune: float = Field(0.7, ge=0, lt=1)
    lowrank: bool = True
    students: list[float] = Field(default_factory=list, max_length=4)
    recovery_epochs: int = Field(2, ge=0, le=100)
    pretrain_epochs: int = Field(0, ge=0, le=1000)
    runs: int = Field(30, ge=1, le=100_000)
    eval_samples: int | None = Field(1000, ge=1)
    task: str | None = None
    search_id: str | None = Field(None, max_length=48)


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
             responses={**ERRORS, **AUTH_ERRORS, 409: ERRORS[400]})  # fmt: skip
def create_search(ctx: Ctx, body: SearchCreate, scope: CallerScope) -> dict[str, Any]:
    """Queue a search; every service replica joins it as a worker (their trials share one study
    per device, and no variant is measured twice). What it names follows the campaigns' rules:
    builtins and uploaded artifacts with an operate token, module code only under a prefix the
    operator allowed and with an admin token, never a path on the server."""

    policy = ReferencePolicy.for_api(ctx.allowed_modules)
    references = [classify("model", body.model), classify("data", body.data)]
    for reference in references:  # before any module is imported
        policy.check(reference)
    if any(r.reach is Reach.MODULE for r in references):
        require(Scope.ADMIN, scope, "a search that names module code")
    fields = body.model_dump(exclude={"search_id"})
    # Validates devices, constraints, objective and the space (a ConfigError is a 400).
    spec = SearchSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
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
