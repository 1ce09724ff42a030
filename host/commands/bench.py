"""Benchmark a model on a board: the one small entry point over the command pipeline.

Blocking::

    with Fleet(broker, store=Store()) as fleet:
        result = benchmark(fleet, "pi-01", "model.tflite", eval_path="eval.npz", runs=50,
                           timeout=600)          # BenchmarkResult; JobFailedError / JobTimeoutError

Non-blocking: :func:`submit_benchmark` records the command and returns its id at once (the
fleet's driver publishes it when the device is online); :func:`poll_benchmark` says where it
stands (None while it runs, the BenchmarkResult once answered, JobFailedError when it failed);
:func:`cancel` gives it up. Many boards at once: :func:`submit_benchmarks` records one command per
device in one transaction, :func:`wait_benchmarks` waits for them all. The result is the agent's :class:`shared.results.BenchmarkResult`,
exactly as stored.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.commands.repository import CommandInfo, NewCommand
from host.errors import ConfigError, JobTimeoutError
from shared.manifest import ArtifactManifest
from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult

if TYPE_CHECKING:
    from host.fleet import Fleet

# On top of a benchmark's own timeout: the transfer and the device's queue.
TRANSFER_ALLOWANCE_S = 300.0


def submit_benchmark(
    fleet: Fleet,
    device_id: str,
    model_path: str | Path,
    **settings: Any,
) -> str:
    """Record a benchmark of ``model_path`` (and its eval set) on ``device_id``; returns the
    command id, which is also the job id the device reports. The device need not be online: the
    command goes out when it is, until ``expires_in`` seconds have passed (default: 7 days).
    The settings are :func:`submit_benchmarks`'."""
    [command_id] = submit_benchmarks(fleet, [device_id], model_path, **settings)
    return command_id


def submit_benchmarks(
    fleet: Fleet,
    device_ids: Sequence[str],
    model_path: str | Path,
    *,
    model_manifest: ArtifactManifest | None = None,
    eval_path: str | Path | None = None,
    eval_manifest: ArtifactManifest | None = None,
    threads: int | None = None,
    runs: int = 50,
    timeout_s: float = 300.0,
    warmup_runs: int = 1,
    warmup_s: float = 0.5,
    min_s: float = 1.0,
    eval_limit: int | None = None,
    task: str | None = None,
    return_outputs: bool = False,
    chunk_size: int | None = None,
    verify_artifacts: bool = True,
    expires_in: float | None = None,
) -> list[str]:
    """Record the same benchmark on each of ``device_ids`` (one transaction, the artifacts
    offered once); returns the command ids in the same order. ``verify_artifacts=False`` serves
    files that do not match their manifest (tests only: the device must then refuse them)."""
    commands = fleet.commands
    model = fleet.offer(model_path, model_manifest, verify=verify_artifacts)
    eval_data = None
    if eval_path is not None:
        eval_data = fleet.offer(eval_path, eval_manifest, verify=verify_artifacts)
    expires_at = time.time() + expires_in if expires_in is not None else None
    news = []
    for device_id in device_ids:
        command_id = commands.commands.new_id()
        try:
            body = BenchmarkCmd(
                job_id=command_id, model=model, eval_data=eval_data,
                chunk_size=chunk_size or fleet.chunk_size, threads=threads,
                warmup_runs=warmup_runs, warmup_s=warmup_s, runs=runs, min_s=min_s,
                timeout_s=timeout_s, eval_limit=eval_limit, task=task,  # type: ignore[arg-type]
                return_outputs=return_outputs,
            )  # fmt: skip
        except TypeError as exc:
            raise ConfigError(f"invalid benchmark settings: {exc}") from exc
        news.append(NewCommand(device_id, body, expires_at=expires_at, command_id=command_id))
    infos = commands.commands.add(news)
    commands.wake()
    return [info.command_id for info in infos]


def poll_benchmark(fleet: Fleet, command_id: str) -> BenchmarkResult | None:
    """None while the benchmark is open; its result once answered; JobFailedError when it
    failed, was cancelled or expired."""
    info = fleet.commands.commands.get(command_id)
    if info is None:
        raise ConfigError(f"no benchmark {command_id} in the database")
    if not info.final:
        return None
    return _result(fleet, info)


def wait_benchmark(fleet: Fleet, command_id: str, timeout: float | None) -> BenchmarkResult:
    """Block until the benchmark is answered; JobFailedError or JobTimeoutError otherwise."""
    return _result(fleet, fleet.commands.wait(command_id, timeout))


def wait_benchmarks(
    fleet: Fleet, command_ids: Sequence[str], timeout: float | None
) -> list[BenchmarkResult]:
    """Block until every one of these benchmarks is final; their results in the same order,
    JobFailedError for the first that failed, JobTimeoutError when one is still open."""
    infos = fleet.commands.wait_all(command_ids, timeout)
    return [_result(fleet, infos[c]) for c in command_ids]


def benchmark(
    fleet: Fleet,
    device_id: str,
    model_path: str | Path,
    *,
    timeout: float | None = None,
    cancel_on_timeout: bool = True,
    **settings: object,
) -> BenchmarkResult:
    """Submit and wait: the BenchmarkResult, or JobFailedError / JobTimeoutError. ``timeout``
    defaults to the benchmark's own timeout plus a transfer allowance; a benchmark given up on
    is cancelled (on the device too) unless ``cancel_on_timeout`` is False."""
    command_id = submit_benchmark(fleet, device_id, model_path, **settings)  # type: ignore[arg-type]
    if timeout is None:
        timeout = float(settings.get("timeout_s", 300.0)) + TRANSFER_ALLOWANCE_S  # type: ignore[arg-type]
    started = time.monotonic()
    try:
        return wait_benchmark(fleet, command_id, timeout)
    except JobTimeoutError:
        if cancel_on_timeout:
            fleet.commands.cancel(command_id)
        raise JobTimeoutError(
            f"benchmark {command_id} on {device_id} gave no answer within "
            f"{time.monotonic() - started:.0f} s; it was cancelled"
        ) from None


def cancel(fleet: Fleet, command_id: str) -> bool:
    return fleet.commands.cancel(command_id)


def _result(fleet: Fleet, info: CommandInfo) -> BenchmarkResult:
    result = fleet.commands.result_of(info)
    if not isinstance(result, BenchmarkResult):
        raise ConfigError(f"command {info.command_id} is a {info.kind}, not a benchmark")
    return result


__all__ = [
    "TRANSFER_ALLOWANCE_S",
    "benchmark",
    "cancel",
    "poll_benchmark",
    "submit_benchmark",
    "submit_benchmarks",
    "wait_benchmark",
    "wait_benchmarks",
]
