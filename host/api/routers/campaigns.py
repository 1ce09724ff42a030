"""Campaigns: create (queued as a job of the service), list, detail, results, selection, cancel.

A campaign is checked whole before it is stored or queued (host.campaign.CampaignSpec.check): what
it names must be a builtin, an uploaded artifact or a name under a module the operator allowed
(403 otherwise, with how to allow it), and must exist (404: builtin, search space, artifact,
device). Naming module code needs an admin token; builtins and uploads, an operate token.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from host.api.context import ApiContext
from host.api.deps import CallerScope, Ctx, Operator, Reader, require
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, ErrorBody, not_found
from host.api.models import (
    CampaignDetail,
    CampaignResults,
    CampaignSelection,
    CampaignSummary,
)
from host.campaign import CampaignSpec, campaign_outcome, new_campaign_id
from host.campaign.references import Reach, ReferencePolicy
from host.campaign.spec import CampaignRequest
from host.errors import ConfigError
from host.security import Scope
from host.store.campaigns import CampaignInfo, CampaignStore
from host.store.service import ServiceStore

router = APIRouter(tags=["campaigns"])


def _stored_spec(campaign: CampaignInfo) -> CampaignSpec | None:
    try:
        return CampaignSpec.from_stored(campaign.spec)
    except ConfigError:  # written by a version whose spec this one cannot read
        return None


def _summary(ctx: ApiContext, campaign: CampaignInfo) -> dict[str, Any]:
    jobs = CampaignStore(ctx.store).jobs(campaign.campaign_id)
    states = [j.status for j in jobs]
    job = ServiceStore(ctx.store).get_job(campaign.campaign_id)
    spec = _stored_spec(campaign)
    return {
        "campaign_id": campaign.campaign_id,
        "status": campaign.status,
        "job": job.state if job else None,
        "model": spec.model if spec else None,
        "data": spec.data if spec else None,
        "devices": campaign.state.devices or (list(spec.devices) if spec else []),
        "jobs": {s: states.count(s) for s in sorted(set(states))},
        "progress": job.progress if job else {},
        # A campaign run from the CLI has no service job; its failure is stored with it.
        "error": (job.error if job else None) or campaign.state.error,
        "created": campaign.created,
        "updated": max(campaign.updated, job.updated if job else 0.0),
    }


def _campaign(ctx: ApiContext, campaign_id: str) -> CampaignInfo:
    cstore = CampaignStore(ctx.store)
    campaign = cstore.get_campaign(campaign_id)
    if campaign is None:
        recent = ", ".join(c.campaign_id for c in cstore.list_campaigns()[-5:]) or "none yet"
        raise not_found("campaign", campaign_id, f"recent campaigns: {recent}")
    return campaign


@router.post("/campaigns", response_model=CampaignSummary, status_code=202,
             responses={**ERRORS, **AUTH_ERRORS,
                        403: {"model": ErrorBody, "description": "the token is not valid, its "
                              "scope is too small, or the spec names what the service does not "
                              "let API callers name (a path on the server, a module not allowed)"},
                        404: {"model": ErrorBody, "description": "an unknown builtin, search "
                              "space, uploaded artifact or device"},
                        409: {"model": ErrorBody, "description": "the campaign_id exists with "
                              "another spec"}})  # fmt: skip
def create_campaign(ctx: Ctx, body: CampaignRequest, scope: CallerScope) -> dict[str, Any]:
    """Queue a campaign; the service compresses, measures on the devices and selects, resumably.

    Everything the spec names is checked before it is stored. An existing ``campaign_id`` with
    the same spec is resumed; with another spec it is refused.
    """
    spec = body.spec()
    policy = ReferencePolicy.for_api(ctx.allowed_modules)
    references = spec.references()
    for reference in references:  # before any module is imported
        policy.check(reference)
    if any(r.reach is Reach.MODULE for r in references):
        require(Scope.ADMIN, scope, "a campaign that names module code")
    campaign_id = body.campaign_id or new_campaign_id()
    cstore = CampaignStore(ctx.store)
    existing = cstore.get_campaign(campaign_id)
    if existing is not None and not spec.same_as(existing.spec):
        raise ApiError(
            409, "conflict",
            f"campaign {campaign_id} exists with another spec; resume it with its own spec "
            "or pick another campaign_id",
        )  # fmt: skip
    known = {d.device_id for d in ctx.store.list_devices()}
    spec.check(policy, store=ctx.store, known_devices=known)
    cstore.create_campaign(campaign_id, spec.to_dict())
    params = {"work_dir": str(ctx.work_root / campaign_id)} if ctx.work_root else {}
    ServiceStore(ctx.store).put_job(campaign_id, "campaign", params)
    return _summary(ctx, _campaign(ctx, campaign_id))


@router.get("/campaigns", response_model=list[CampaignSummary], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def list_campaigns(ctx: Ctx) -> list[dict[str, Any]]:
    """Every stored campaign, newest first."""
    campaigns = CampaignStore(ctx.store).list_campaigns()
    return [_summary(ctx, c) for c in reversed(campaigns)]


@router.get("/campaigns/{campaign_id}", response_model=CampaignDetail, dependencies=[Reader],
            responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def get_campaign(ctx: Ctx, campaign_id: str) -> dict[str, Any]:
    """Spec, status, candidates and (once measured) the selection."""
    campaign = _campaign(ctx, campaign_id)
    candidates = [
        {
            "id": c.candidate_id,
            "recipe": c.recipe_name,
            "format": c.format,
            "precision": c.precision,
            "status": c.status,
            "reason": c.reason,
            "sha256": c.sha256,
            "size_bytes": c.size_bytes,
            **c.host_metrics,
        }
        for c in CampaignStore(ctx.store).candidates(campaign_id)
    ]
    return {
        **_summary(ctx, campaign), "spec": campaign.spec, "candidates": candidates,
        "selection": campaign.selection,
    }  # fmt: skip


@router.get("/campaigns/{campaign_id}/results", response_model=CampaignResults,
            dependencies=[Reader], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def campaign_results(ctx: Ctx, campaign_id: str) -> dict[str, Any]:
    """One row per (candidate, device) job that ended: latency, memory, metric, status."""
    _campaign(ctx, campaign_id)
    outcome = campaign_outcome(CampaignStore(ctx.store), campaign_id)
    return {"campaign_id": campaign_id, "results": outcome["results"]}


@router.get("/campaigns/{campaign_id}/selection", response_model=CampaignSelection,
            dependencies=[Reader], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def campaign_selection(ctx: Ctx, campaign_id: str) -> dict[str, Any]:
    """Per device: the chosen candidate and the reason in words (the stored selection of a
    finished campaign; from the results so far while it runs)."""
    campaign = _campaign(ctx, campaign_id)
    if campaign.status == "done" and campaign.selection is not None:
        return {"campaign_id": campaign_id, "selection": campaign.selection}
    outcome = campaign_outcome(CampaignStore(ctx.store), campaign_id)
    return {"campaign_id": campaign_id, "selection": outcome["selection"]}


@router.post("/campaigns/{campaign_id}/cancel", response_model=CampaignSummary,
             dependencies=[Operator], responses={**ERRORS, **AUTH_ERRORS, 409: ERRORS[400]})  # fmt: skip
def cancel_campaign(ctx: Ctx, campaign_id: str) -> dict[str, Any]:
    """A queued campaign never starts; a running one stops at its next device step."""
    campaign = _campaign(ctx, campaign_id)
    if ServiceStore(ctx.store).request_cancel(campaign_id) is None:
        raise ApiError(
            409, "not_a_service_job",
            f"campaign {campaign_id} was run from the CLI, not by the service; stop it there",
        )  # fmt: skip
    return _summary(ctx, campaign)
