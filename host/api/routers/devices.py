"""Devices: list, detail (capabilities, telemetry, active model, desired state, history), the
fleet status (desired versus actual per device), and a device's rollback."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool

from host.api.context import ApiContext
from host.api.deps import Ctx, Operator, Reader
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.api.models import (
    ActiveModel,
    DesiredState,
    DeviceDetail,
    DeviceRollback,
    DeviceSummary,
    FleetStatusRow,
    HistoryItem,
    RollbackOutcome,
)
from host.commands.models import ANSWERED
from host.commands.repository import CommandStore
from host.deploy import Deployer
from host.deploy.status import desired_state, never_seen
from host.store import DeviceInfo
from host.store.deployments import DeploymentStore
from shared.results import BenchmarkResult

router = APIRouter(tags=["devices"])


def active_sha(device: DeviceInfo) -> str | None:
    return (device.telemetry or {}).get("active_sha256") or (device.birth or {}).get(
        "active_sha256"
    )


def _label(ctx: ApiContext, sha256: str | None) -> ActiveModel | None:
    if not sha256:
        return None
    artifact = ctx.store.get_artifact(sha256)
    name = (artifact or {}).get("manifest", {}).get("name") if artifact else None
    return ActiveModel(sha256=sha256, label=name or None)


def _summary(ctx: ApiContext, device: DeviceInfo) -> dict[str, Any]:
    birth = device.birth or {}
    return {
        "device_id": device.device_id,
        "online": device.online,
        "arch": birth.get("arch"),
        "cores": birth.get("cores"),
        "ram_mb": birth.get("ram_mb"),
        "agent_version": birth.get("agent_version"),
        "runtimes": [f"{r.get('name')} {r.get('version')}" for r in birth.get("runtimes") or []],
        "tags": birth.get("tags") or {},
        "last_seen": device.last_seen,
        "last_telemetry_at": device.last_telemetry_at,
        "active_model": _label(ctx, active_sha(device)),
    }


def _state(ctx: ApiContext, device: DeviceInfo) -> DesiredState:
    doc = desired_state(
        DeploymentStore(ctx.store), device.device_id, actual_sha256=active_sha(device),
        online=device.online, last_seen=device.last_seen,
    )  # fmt: skip
    return DesiredState(**doc)


def _device(ctx: ApiContext, device_id: str) -> DeviceInfo:
    device = ctx.store.get_device(device_id)
    if device is None:
        known = ", ".join(d.device_id for d in ctx.store.list_devices()[:10]) or "none yet"
        raise not_found("device", device_id, f"known devices: {known}")
    return device


@router.get("/devices", response_model=list[DeviceSummary], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def list_devices(ctx: Ctx) -> list[dict[str, Any]]:
    """Every device this service has heard of, online or not."""
    return [_summary(ctx, d) for d in ctx.store.list_devices()]


@router.get("/devices/{device_id}", response_model=DeviceDetail, dependencies=[Reader],
            responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def get_device(ctx: Ctx, device_id: str) -> dict[str, Any]:
    """Capabilities, last telemetry, active model, desired state and history of one device."""
    device = _device(ctx, device_id)
    history: list[HistoryItem] = []
    for target in DeploymentStore(ctx.store).targets(device_id=device_id):
        history.append(HistoryItem(
            kind="deploy", id=target.deploy_id, at=target.updated, status=target.state,
            sha256=target.sha256 or None, detail=target.detail,
        ))  # fmt: skip
    for job in CommandStore(ctx.store).list(
        device_id=device_id, kinds=("benchmark",), finished_only=True, limit=50, newest_first=True
    ):
        history.append(HistoryItem(
            kind="benchmark", id=job.job_id, at=job.finished or job.updated,
            status="ok" if job.state == ANSWERED else "error", sha256=job.model_sha256,
            detail=job.error_message or "",
        ))  # fmt: skip
    history.sort(key=lambda item: item.at, reverse=True)
    return {
        **_summary(ctx, device),
        "capabilities": device.birth,
        "telemetry": device.telemetry,
        "first_seen": device.first_seen,
        "state": _state(ctx, device),
        "history": history[:100],
    }


@router.get("/status", response_model=list[FleetStatusRow], dependencies=[Reader],
            responses=AUTH_ERRORS)  # fmt: skip
def fleet_status(ctx: Ctx) -> list[dict[str, Any]]:
    """Per device: online, active model, desired state and why they differ, last results; and
    the devices a deploy waits for that were never seen ("pending until first seen")."""
    rows = []
    commands = CommandStore(ctx.store)
    for device in ctx.store.list_devices():
        results = []
        for job in commands.list(
            device_id=device.device_id, kinds=("benchmark",), finished_only=True, limit=3,
            newest_first=True,
        ):  # fmt: skip
            result = job.result_as(BenchmarkResult) if job.state == ANSWERED else None
            results.append({
                "job_id": job.job_id, "status": "ok" if job.state == ANSWERED else "error",
                "latency_p90_ms": result.latency_ms.p90 if result else None,
                "metric": result.metric if result else None,
                "metric_value": result.metric_value if result else None,
                "error": job.error_message, "received": job.finished,
            })  # fmt: skip
        rows.append({
            "device_id": device.device_id, "online": device.online,
            "tags": (device.birth or {}).get("tags") or {}, "last_seen": device.last_seen,
            "active_model": _label(ctx, active_sha(device)), "state": _state(ctx, device),
            "last_results": results,
        })  # fmt: skip
    dstore = DeploymentStore(ctx.store)
    for device_id in never_seen(dstore, {r["device_id"] for r in rows}):
        state = desired_state(dstore, device_id, actual_sha256=None, online=False, seen=False)
        rows.append({"device_id": device_id, "online": False, "last_seen": None,
                     "state": DesiredState(**state)})  # fmt: skip
    return rows


@router.post("/devices/{device_id}/rollback", response_model=RollbackOutcome,
             dependencies=[Operator], responses={**ERRORS, **AUTH_ERRORS, 503: ERRORS[400]})  # fmt: skip
async def rollback_device(ctx: Ctx, device_id: str, body: DeviceRollback) -> dict[str, Any]:
    """Restore the model the device ran before its last deploy (waits for the device's answer)."""
    _device(ctx, device_id)
    if ctx.fleet is None:
        raise ApiError(503, "no_fleet", "this API serves the database only: no broker connected")

    def run() -> dict[str, Any]:
        deployer = Deployer(ctx.fleet, device_timeout_s=min(body.timeout_s, 30.0))
        outcome = deployer.rollback(
            device_id, deploy_id=body.deploy_id, reason=body.reason, timeout=body.timeout_s
        )
        return asdict(outcome)

    started = time.monotonic()
    doc = await run_in_threadpool(run)
    doc["detail"] = doc.get("detail") or f"answered in {time.monotonic() - started:.1f} s"
    return doc
