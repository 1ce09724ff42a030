"""Chunked artifact transfer driven by the device: corruption, lies about the hash, resume."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

import numpy as np

from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult, from_data
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)


def test_corrupted_chunk_is_rejected_and_requested_again(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    minihost.corrupt_once(model.sha256, 1)
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="c", model=model, chunk_size=1024, **FAST)
    )
    result = from_data(result_of(minihost.wait_final(cmd, 60)), BenchmarkResult)
    transfer = result.transfers[0]
    assert transfer.rejected_chunks == 1
    assert minihost.requested_indices(model.sha256).count(1) == 2
    assert (data_dir / "store" / f"{model.sha256}.tflite").read_bytes() == (
        model_dir / "float.tflite"
    ).read_bytes()


def test_manifest_whose_sha_does_not_match_the_content_fails_with_hash_mismatch_and_stores_nothing(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    lie = "ab" * 32
    model = minihost.offer(model_dir / "float.tflite", "tflite", sha256=lie)
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="h", model=model, chunk_size=1024, **FAST)
    )
    failed = minihost.wait_final(cmd, 60)
    assert (
        failed.status == "error"
        and failed.error is not None
        and failed.error.code == "hash_mismatch"
    )
    assert list((data_dir / "store").iterdir()) == []
    assert list((data_dir / "partial").iterdir()) == []


def _stored_chunks(have_file: Path) -> int:
    try:
        raw = have_file.read_bytes()
    except FileNotFoundError:
        return 0
    header = struct.calcsize("!4sIQ")
    return sum(b.bit_count() for b in raw[header:])


def test_agent_restarted_mid_transfer_resumes_and_asks_only_for_missing_chunks(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    rng = np.random.default_rng(3)
    big_eval = tmp_path / "big_eval.npz"
    labels = rng.integers(0, 10, 600)
    np.savez(big_eval, x=rng.standard_normal((600, 1, 8, 8)).astype(np.float32), y=labels)
    agent = start_agent(["--xfer-retry-s", "0.5"])
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    eval_data = minihost.offer(big_eval, "npz", "data")
    chunk_size = 1024
    total = -(-eval_data.size_bytes // chunk_size)
    served_before_kill = 10
    assert total > 3 * served_before_kill

    minihost.chunk_filter = lambda sha, index: sha != eval_data.sha256 or index < served_before_kill
    cmd_id = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="resume",
            model=model,
            eval_data=eval_data,
            chunk_size=chunk_size,
            eval_limit=50,
            **FAST,
        ),
    )
    have = data_dir / "partial" / f"{eval_data.sha256}.have"
    minihost.wait_for(lambda: _stored_chunks(have) == served_before_kill, 30, "first chunks stored")
    agent.kill()

    minihost.chunk_filter = None
    agent.restart()
    restarted_at = agent.started_at
    result = from_data(result_of(minihost.wait_final(cmd_id, 90)), BenchmarkResult)

    asked_after = minihost.requested_indices(eval_data.sha256, device_id, since=restarted_at)
    assert set(asked_after) == set(range(served_before_kill, total))
    assert not set(asked_after) & set(range(served_before_kill))
    eval_transfer = result.transfers[1]
    assert eval_transfer.chunks_written == total - served_before_kill
    assert result.eval_samples == 50
    assert (data_dir / "store" / f"{eval_data.sha256}.npz").read_bytes() == big_eval.read_bytes()


def test_transfer_with_no_chunk_arriving_fails_with_transfer_timeout_and_removes_the_partial_file(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent(["--xfer-timeout-s", "2", "--xfer-retry-s", "0.5"])
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    minihost.serving = False
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="t", model=model, chunk_size=1024, **FAST)
    )
    failed = minihost.wait_final(cmd, 30)
    assert (
        failed.status == "error"
        and failed.error is not None
        and failed.error.code == "transfer_timeout"
    )
    # It asked again while waiting, and only for the chunks of its window.
    asked = minihost.requested_indices(model.sha256, device_id)
    total = -(-model.size_bytes // 1024)
    assert len(asked) > total and set(asked) == set(range(total))
    # A failed transfer gives its preallocated space back (only a restart resumes a partial file).
    assert list((data_dir / "partial").iterdir()) == []
    assert not (data_dir / "store" / f"{model.sha256}.tflite").exists()
