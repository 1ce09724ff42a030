"""Deployments: create a rollout with waves (desired state), status, rollback, cancel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import APIRouter

from host.api.context import ApiContext
from host.api.deps import Ctx, Reader, Writer
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.api.models import DeploymentCreate, DeploymentStatus
from host.deploy import DeploymentDriver, DeployTarget, create_rollout, targets_from_campaign
from host.store.deployments import DeploymentStore, RolloutInfo
from shared.manifest import ArtifactManifest

router = APIRouter(tags=["deployments"])


def _status(ctx: ApiContext, rollout: RolloutInfo) -> dict[str, Any]:
    targets = DeploymentStore(ctx.store).targets(rollout.rollout_id)
    states = [t.state for t in targets]
    return {
        "rollout_id": rollout.rollout_id,
        "status": rollout.status,
        "open": rollout.open,
        "waves": rollout.waves,
        "current_wave": rollout.current_wave,
        "max_failures": rollout.max_failures,
        "aborted_wave": rollout.aborted_wave,
        "reason": rollout.reason,
        "label": rollout.label,
        "counts": {s: states.count(s) for s in sorted(set(states))},
        "devices": [
            {
                "deploy_id": t.deploy_id,
                "device_id": t.device_id,
                "wave": t.wave,
                "label": t.label,
                "sha256": t.sha256,
                "state": t.state,
                "stage": t.stage,
                "sequence": t.sequence,
                "sent_at": t.sent_at,
                "finished_at": t.finished_at,
                "active_sha256": t.active_sha256,
                "error_code": t.error_code,
                "detail": t.detail,
                "health": t.health,
                "rollback": t.rollback_state,
            }
            for t in targets
        ],
        "created": rollout.created,
        "updated": rollout.updated,
    }


def _rollout(ctx: ApiContext, rollout_id: str) -> RolloutInfo:
    rollout = DeploymentStore(ctx.store).get_rollout(rollout_id)
    if rollout is None:
        raise not_found("deployment", rollout_id, "list them with GET /api/v1/deployments")
    return rollout


def stored_artifact(ctx: ApiContext, sha256: str, what: str) -> tuple[Path, ArtifactManifest]:
    """A stored artifact's file and its unsigned manifest; 404/400 when it is unknown or gone."""
    import msgspec

    artifact = ctx.store.get_artifact(sha256)
    if artifact is None:
        raise not_found(what, sha256, "upload it with POST /api/v1/artifacts first")
    path = artifact.get("path")
    if not path or not Path(path).is_file():
        raise ApiError(400, "artifact_missing", f"{what} {sha256} is recorded but its file is gone")
    manifest = msgspec.convert(artifact["manifest"], ArtifactManifest)
    manifest = msgspec.structs.replace(
        manifest, target_device=None, sequence=0, key_id=None, signature=None
    )
    return Path(path), manifest


@router.post("/deployments", response_model=DeploymentStatus, status_code=201,
             dependencies=[Writer], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def create_deployment(ctx: Ctx, body: DeploymentCreate) -> dict[str, Any]:
    """Record what each device should run, in waves; the service sends it as devices are online.

    Give exactly one of ``campaign_id`` (each selected device's choice; ``devices`` narrows it),
    ``sha256`` with ``devices``, or ``targets`` (a stored artifact per device).
    """
    given = [n for n in ("campaign_id", "sha256", "targets") if getattr(body, n) is not None]
    if len(given) != 1:
        raise ApiError(
            422, "invalid_request",
            "give exactly one of campaign_id, sha256 (with devices) or targets; got "
            f"{', '.join(given) or 'none'}",
        )  # fmt: skip
    eval_path = stored_artifact(ctx, body.eval_sha256, "eval set")[0] if body.eval_sha256 else None
    if body.campaign_id is not None:
        targets = targets_from_campaign(
            ctx.store, body.campaign_id, devices=body.devices,
            latency_budget_ms=body.latency_budget_ms, min_metric=body.min_metric,
        )  # fmt: skip
    else:
        pairs = (
            [(d, body.sha256) for d in body.devices or []]
            if body.sha256 is not None
            else [(t.device_id, t.sha256) for t in body.targets or []]
        )
        if not pairs:
            raise ApiError(422, "invalid_request", "devices: name at least one device")
        targets = []
        for device, sha in pairs:
            path, manifest = stored_artifact(ctx, str(sha), "artifact")
            targets.append(DeployTarget(
                device_id=device, artifact=path, manifest=manifest, eval_path=eval_path,
                latency_budget_ms=body.latency_budget_ms, min_metric=body.min_metric,
                label=manifest.name,
            ))  # fmt: skip
    rollout = create_rollout(
        ctx.store, targets, body.waves, max_failures=body.max_failures,
        health_runs=body.health_runs, timeout_s=body.timeout_s, threads=body.threads,
        offline_grace_s=body.offline_grace_s, label=body.campaign_id or "",
    )  # fmt: skip
    return _status(ctx, rollout)


@router.get("/deployments", response_model=list[DeploymentStatus], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def list_deployments(ctx: Ctx) -> list[dict[str, Any]]:
    """Rollouts, newest first (the last 100)."""
    return [_status(ctx, r) for r in DeploymentStore(ctx.store).list_rollouts(limit=100)]


@router.get("/deployments/{rollout_id}", response_model=DeploymentStatus,
            dependencies=[Reader], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def get_deployment(ctx: Ctx, rollout_id: str) -> dict[str, Any]:
    """The rollout and each device's state, stage, sequence and health report."""
    return _status(ctx, _rollout(ctx, rollout_id))


@router.post("/deployments/{rollout_id}/rollback", response_model=DeploymentStatus,
             dependencies=[Writer], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def rollback_deployment(ctx: Ctx, rollout_id: str) -> dict[str, Any]:
    """Send nothing more, and roll back every device this rollout committed on."""
    _rollout(ctx, rollout_id)
    DeploymentDriver(ctx.store, ctx.fleet).roll_back(rollout_id)
    return _status(ctx, _rollout(ctx, rollout_id))


@router.post("/deployments/{rollout_id}/cancel", response_model=DeploymentStatus,
             dependencies=[Writer], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def cancel_deployment(ctx: Ctx, rollout_id: str) -> dict[str, Any]:
    """Send nothing more; what was sent finishes (roll it back to undo it)."""
    rollout = _rollout(ctx, rollout_id)
    if not DeploymentDriver(ctx.store, ctx.fleet).cancel(rollout_id):
        raise ApiError(
            400, "not_active",
            f"deployment {rollout_id} is {rollout.status}, not active; nothing to cancel",
        )  # fmt: skip
    return _status(ctx, _rollout(ctx, rollout_id))
