"""Benchmarks: one stored model on one device, as `edgetailor bench` does; and any job's state.

The job is a recorded command (host.commands) and its result the agent's BenchmarkResult stored
with it, so a result that arrives while no client is polling is kept, and ``GET /jobs/{id}``
answers after a restart of the service.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from host.api.deps import Ctx, Operator, Reader
from host.api.errors import AUTH_ERRORS, ERRORS, ApiError, not_found
from host.api.models import BenchmarkCreate, JobStatus
from host.api.routers.deployments import (
    EVAL_FORMATS,
    MODEL_FORMATS,
    check_devices,
    stored_artifact,
)
from host.commands.bench import submit_benchmark
from host.commands.models import ANSWERED, OPEN_STATES, PENDING
from host.commands.repository import CommandInfo, CommandStore
from host.errors import DeviceUnavailableError
from shared.results import to_data

router = APIRouter(tags=["benchmarks"])


def _status(job: CommandInfo) -> dict[str, Any]:
    if job.state in OPEN_STATES:
        status = "submitted" if job.state == PENDING or job.stage is None else job.stage
    else:
        status = "ok" if job.state == ANSWERED else "error"
    result = job.result() if job.state == ANSWERED else None
    return {
        "job_id": job.job_id,
        "device_id": job.device_id,
        "kind": job.kind,
        "status": status,
        "finished": job.final,
        "model_sha256": job.model_sha256,
        "error_code": job.error_code,
        "error_message": job.error_message,
        "submitted": job.created,
        "updated": job.updated,
        "result": to_data(result) if result is not None else None,
    }


@router.post("/benchmarks", response_model=JobStatus, status_code=202, dependencies=[Operator],
             responses={**ERRORS, **AUTH_ERRORS, 503: ERRORS[400]})  # fmt: skip
async def create_benchmark(ctx: Ctx, body: BenchmarkCreate) -> dict[str, Any]:
    """Send a stored model (and eval set) to a device and benchmark it there; poll the job."""
    model, manifest = stored_artifact(ctx, body.sha256, "artifact", MODEL_FORMATS)
    eval_path, eval_manifest = (
        stored_artifact(ctx, body.eval_sha256, "eval set", EVAL_FORMATS)
        if body.eval_sha256
        else (None, None)
    )
    check_devices(ctx, [body.device_id], pending_ok=False)
    if ctx.fleet is None:
        raise ApiError(503, "no_fleet", "this API serves the database only: no broker connected")

    def submit() -> str:
        ctx.fleet.wait_for_device(body.device_id, body.device_timeout_s)
        return submit_benchmark(
            ctx.fleet, body.device_id, model, model_manifest=manifest, eval_path=eval_path,
            eval_manifest=eval_manifest, threads=body.threads, runs=body.runs,
            timeout_s=body.timeout_s, task=body.task,
        )  # fmt: skip

    try:
        job_id = await run_in_threadpool(submit)
    except DeviceUnavailableError as exc:
        raise ApiError(503, "device_unavailable", str(exc)) from exc
    job = CommandStore(ctx.store).get(job_id)
    if job is None:  # recorded before it is ever published
        raise ApiError(500, "internal", f"job {job_id} was sent but not recorded")
    return _status(job)


@router.get("/jobs/{job_id}", response_model=JobStatus, dependencies=[Reader],
            responses={**ERRORS, **AUTH_ERRORS})  # fmt: skip
def get_job(ctx: Ctx, job_id: str) -> dict[str, Any]:
    """A job's state; its result once the device answered."""
    job = CommandStore(ctx.store).find(job_id)
    if job is None:
        raise not_found("job", job_id, "benchmark jobs are made with POST /api/v1/benchmarks")
    return _status(job)
