"""Runs one benchmark in an isolated worker process with resource limits and a wall-clock timeout.

The agent never loads a model itself: a model that crashes the runtime, exhausts memory or spins
forever only takes down the worker. RLIMIT_AS bounds memory, RLIMIT_CPU bounds CPU time, RLIMIT_FSIZE
bounds what the worker may write; the wall-clock ``timeout_s`` kills the worker's process group.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from device_agent.errors import JobError

logger = logging.getLogger(__name__)

STDERR_TAIL_BYTES = 2000


@dataclass(frozen=True)
class WorkerLimits:
    memory_bytes: int | None = None  # RLIMIT_AS; None leaves it unlimited
    file_bytes: int = 64 * 1024 * 1024  # RLIMIT_FSIZE: result file and logs only
    cpu_affinity: tuple[int, ...] | None = None


def _preexec(limits: WorkerLimits, cpu_seconds: int) -> Any:
    def apply() -> None:
        if limits.memory_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        if limits.cpu_affinity:
            os.sched_setaffinity(0, limits.cpu_affinity)

    return apply


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - STDERR_TAIL_BYTES))
            return handle.read().decode("utf-8", errors="replace").strip()
    except OSError:
        return ""


def run_worker(
    job: dict[str, Any],
    work_dir: Path,
    *,
    timeout_s: float,
    limits: WorkerLimits,
    cancelled: threading.Event | None = None,
) -> dict[str, Any]:
    """Run the worker on ``job``; return its result dict or raise JobError with a precise code."""
    work_dir.mkdir(parents=True, exist_ok=True)
    job_path = work_dir / "job.json"
    result_path = work_dir / "result.json"
    stderr_path = work_dir / "worker.stderr"
    result_path.unlink(missing_ok=True)
    job_path.write_text(json.dumps(job), "utf-8")
    cores = len(limits.cpu_affinity) if limits.cpu_affinity else (os.cpu_count() or 1)
    cpu_seconds = max(5, math.ceil(timeout_s * cores) + 5)
    env = dict(os.environ)
    env.pop("EDGETAILOR_AGENT_CRASH_AT", None)
    with open(stderr_path, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "device_agent.bench.worker", str(job_path), str(result_path)],
            stdin=subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            cwd=str(work_dir),
            env=env,
            # rlimits must be set in the child before exec; the hook only calls setrlimit/sched_setaffinity.
            preexec_fn=_preexec(limits, cpu_seconds),  # noqa: PLW1509
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        try:
            while proc.poll() is None:
                if cancelled is not None and cancelled.is_set():
                    _kill_group(proc)
                    raise JobError("cancelled", "the job was cancelled while the benchmark ran")
                if time.monotonic() > deadline:
                    _kill_group(proc)
                    raise JobError(
                        "timeout",
                        f"the benchmark did not finish within {timeout_s:g} s and was killed; "
                        "lower runs/min_s or raise timeout_s",
                    )
                try:
                    proc.wait(timeout=0.1)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            if proc.poll() is None:
                _kill_group(proc)
    code = proc.returncode
    outcome: dict[str, Any] | None = None
    if result_path.exists():
        try:
            outcome = json.loads(result_path.read_text("utf-8"))
        except (OSError, ValueError):
            outcome = None
    if outcome is not None and outcome.get("ok"):
        return outcome["result"]
    if outcome is not None and isinstance(outcome.get("error"), dict):
        error = outcome["error"]
        raise JobError(str(error.get("code", "bench_failed")), str(error.get("message", ""))[:3000])
    tail = _tail(stderr_path)
    if code == -signal.SIGXCPU:
        raise JobError(
            "timeout", f"the benchmark worker exceeded its CPU time limit ({cpu_seconds} s)"
        )
    raise JobError(
        "worker_crashed",
        f"the benchmark worker {_describe_exit(code)} without a result; stderr tail: {tail[-1500:]}",
    )


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        proc.kill()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        logger.error("benchmark worker %d did not die after SIGKILL", proc.pid)
