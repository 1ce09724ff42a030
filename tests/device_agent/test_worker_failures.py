"""A model that breaks the runtime, a crashing worker and a job past its timeout are reported as
failures; the agent itself keeps serving."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import psutil

from shared.messages import BenchmarkCmd, PingCmd
from shared.results import BenchmarkResult, from_data
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=5, min_s=0.0, timeout_s=60.0)


def test_random_bytes_model_fails_in_the_worker_and_the_next_job_runs_fine(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
) -> None:
    agent = start_agent()
    garbage = tmp_path / "garbage.tflite"
    garbage.write_bytes(os.urandom(3000))
    bad = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="bad", model=minihost.offer(garbage, "tflite"), chunk_size=1024, **FAST
        ),
    )
    failed = minihost.wait_final(bad, 60)
    assert failed.status == "error" and failed.error is not None
    assert failed.error.code == "model_load_failed"
    assert "flatbuffer" in failed.error.message.lower()
    assert failed.data == {"job_id": "bad"}
    assert agent.running

    good = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="good",
            model=minihost.offer(model_dir / "float.tflite", "tflite"),
            chunk_size=1024,
            **FAST,
        ),
    )
    result = from_data(result_of(minihost.wait_final(good, 60)), BenchmarkResult)
    assert result.job_id == "good" and result.runs >= 5


def test_job_past_its_timeout_is_killed_and_reported_and_the_next_job_runs_fine(
    model_dir: Path, start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    agent = start_agent()
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    slow = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="slow", model=model, runs=1_000_000, min_s=3600.0, warmup_s=0.0, timeout_s=2.0
        ),
    )
    failed = minihost.wait_final(slow, 30)
    assert failed.status == "error" and failed.error is not None and failed.error.code == "timeout"
    assert "2 s" in failed.error.message
    # The worker was killed, not left running beside the agent.
    assert agent.proc is not None
    assert psutil.Process(agent.proc.pid).children(recursive=True) == []
    quick = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="quick", model=model, **FAST))
    assert from_data(result_of(minihost.wait_final(quick, 60)), BenchmarkResult).job_id == "quick"
    assert agent.running


def test_worker_starved_of_memory_crashes_and_is_reported_with_its_exit_and_stderr(
    model_dir: Path, start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    # 100 MiB of address space lets Python start but not the numeric libraries: a real crash.
    agent = start_agent(["--worker-memory-mb", "100"])
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    crashed = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="oom", model=model, **FAST))
    failed = minihost.wait_final(crashed, 60)
    assert failed.status == "error" and failed.error is not None
    assert failed.error.code == "worker_crashed", failed.error
    assert "exited with code" in failed.error.message and "stderr tail" in failed.error.message
    ping = minihost.send(device_id, "ping", PingCmd())
    assert minihost.wait_final(ping, 10).status == "ok"
    assert agent.running
