"""Deployments: create a rollout with waves (desired state), status, rollback, cancel.

A rollout is checked whole before it is stored: each artifact is of the kind its field names (a
model to deploy, an eval .npz for the health check: 422 otherwise), and each device is one this
service has seen (404), unless the caller says ``pending_ok``: such a device then waits, shown
as "pending until first seen", until its agent first connects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from fastapi import APIRouter

from host.api.context import ApiContext
from host.api.deps import Ctx, Operator, Reader
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.api.models import (
    DeployArtifact,
    DeployCampaign,
    DeploymentCreate,
    DeploymentStatus,
    DeployTargets,
)
from host.deploy import DeploymentDriver, DeployTarget, create_rollout, targets_from_campaign
from host.errors import UnknownDeviceError
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


MODEL_FORMATS = ("tflite", "onnx")
EVAL_FORMATS = ("npz",)


def stored_artifact(
    ctx: ApiContext, sha256: str, what: str, formats: tuple[str, ...]
) -> tuple[Path, ArtifactManifest]:
    """A stored artifact's file and its unsigned manifest: 404 when it is unknown or its file is
    gone, 422 when it is not of one of ``formats``."""

    artifact = ctx.store.get_artifact(sha256)
    if artifact is None:
        raise not_found(what, sha256, "upload it with POST /api/v1/artifacts first")
    manifest = msgspec.convert(artifact["manifest"], ArtifactManifest)
    if manifest.format not in formats:
        raise ApiError(
            422, "wrong_artifact_kind",
            f"{what} {sha256} is a .{manifest.format}; it must be a "
            f"{' or '.join('.' + f for f in formats)}",
        )  # fmt: skip
    path = artifact.get("path")
    if not path or not Path(path).is_file():
        raise not_found(what, sha256, "it is recorded but its file is gone: upload it again")
    manifest = msgspec.structs.replace(
        manifest, target_device=None, sequence=0, key_id=None, signature=None
    )
    return Path(path), manifest


def check_devices(ctx: ApiContext, devices: list[str], pending_ok: bool) -> None:
    """404 for a device this service has never seen, unless the caller accepts it as pending."""
    if pending_ok:
        return
    known = {d.device_id for d in ctx.store.list_devices()}
    if ctx.fleet is not None:
        known |= set(ctx.fleet.devices())
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise UnknownDeviceError(
            f"device(s) {', '.join(unknown[:20])} never seen by this service (known: "
            f"{', '.join(sorted(known)[:20]) or 'none yet'}); start their agents first, or send "
            "pending_ok: true to deploy to them when they first connect"
        )


def _pairs(body: DeployArtifact | DeployTargets) -> list[tuple[str, str]]:
    """(device, sha256) per target; a device named twice with one artifact counts once."""
    if isinstance(body, DeployArtifact):
        return [(d, body.sha256) for d in dict.fromkeys(body.devices)]
    pairs = list(dict.fromkeys((t.device_id, t.sha256) for t in body.targets))
    if len({d for d, _ in pairs}) != len(pairs):
        raise ApiError(409, "conflict", "targets: a device is given two different artifacts")
    return pairs


@router.post("/deployments", response_model=DeploymentStatus, status_code=201,
             dependencies=[Operator], responses={**ERRORS, **AUTH_ERRORS, 409: ERRORS[400]})  # fmt: skip
def create_deployment(ctx: Ctx, body: DeploymentCreate) -> dict[str, Any]:
    """Record what each device should run, in waves; the service sends it as devices are online.

    Give exactly one of ``campaign_id`` (each selected device's choice; ``devices`` narrows it),
    ``sha256`` with ``devices``, or ``targets`` (a stored artifact per device).
    """
    eval_sha = getattr(body, "eval_sha256", None)
    eval_path = stored_artifact(ctx, eval_sha, "eval set", EVAL_FORMATS)[0] if eval_sha else None
    if isinstance(body, DeployCampaign):
        targets = targets_from_campaign(
            ctx.store, body.campaign_id, devices=body.devices,
            latency_budget_ms=body.latency_budget_ms, min_metric=body.min_metric,
        )  # fmt: skip
    else:
        pairs = _pairs(body)
        check_devices(ctx, [d for d, _ in pairs], body.pending_ok)
        stored = {sha: stored_artifact(ctx, sha, "artifact", MODEL_FORMATS) for sha in
                  dict.fromkeys(sha for _, sha in pairs)}  # fmt: skip
        targets = [
            DeployTarget(
                device_id=device, artifact=stored[sha][0], manifest=stored[sha][1],
                eval_path=eval_path, latency_budget_ms=body.latency_budget_ms,
                min_metric=body.min_metric, label=stored[sha][1].name,
            )
            for device, sha in pairs
        ]  # fmt: skip
    rollout = create_rollout(
        ctx.store, targets, body.waves, max_failures=body.max_failures,
        health_runs=body.health_runs, timeout_s=body.timeout_s, threads=body.threads,
        offline_grace_s=body.offline_grace_s,
        label=body.campaign_id if isinstance(body, DeployCampaign) else "",
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
             dependencies=[Operator], responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def rollback_deployment(ctx: Ctx, rollout_id: str) -> dict[str, Any]:
    """Send nothing more, and roll back every device this rollout committed on."""
    _rollout(ctx, rollout_id)
    DeploymentDriver(ctx.store, ctx.fleet).roll_back(rollout_id)
    return _status(ctx, _rollout(ctx, rollout_id))


@router.post("/deployments/{rollout_id}/cancel", response_model=DeploymentStatus,
             dependencies=[Operator], responses={**ERRORS, **AUTH_ERRORS, 409: ERRORS[400]})  # fmt: skip
def cancel_deployment(ctx: Ctx, rollout_id: str) -> dict[str, Any]:
    """Send nothing more; what was sent finishes (roll it back to undo it)."""
    rollout = _rollout(ctx, rollout_id)
    if not DeploymentDriver(ctx.store, ctx.fleet).cancel(rollout_id):
        raise ApiError(
            409, "not_active",
            f"deployment {rollout_id} is {rollout.status}, not active; nothing to cancel",
        )  # fmt: skip
    return _status(ctx, _rollout(ctx, rollout_id))
