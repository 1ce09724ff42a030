"""A full disk never makes the agent deaf: real small tmpfs filesystems, real ENOSPC, a real agent.

Mounting needs root (or CAP_SYS_ADMIN); where it is not permitted these tests skip and say why.
"""

from __future__ import annotations

import os
import struct
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from shared.messages import BenchmarkCmd, Response
from shared.results import BenchmarkResult, from_data
from shared.transfer import chunk_count
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)
CHUNK = 64 * 1024


def _mount_tmpfs(target: Path, size: str) -> None:
    target.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(target)],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        pytest.skip(
            f"cannot mount a {size} tmpfs at {target} (needs root or CAP_SYS_ADMIN): "
            f"{proc.stderr.strip() or proc.returncode}"
        )


def _unmount(target: Path) -> None:
    subprocess.run(["umount", "-l", str(target)], capture_output=True)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 5 MB filesystem of the test's own."""
    target = tmp_path / "small-fs"
    _mount_tmpfs(target, "5m")
    yield target
    _unmount(target)


@pytest.fixture
def data_dir(small_fs: Path) -> Path:
    return small_fs / "agent"


def fill(directory: Path, name: str = "filler") -> Path:
    """Write until the filesystem says ENOSPC; returns the file that fills it."""
    path = directory / name
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for size in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                continue
    finally:
        os.close(fd)
    return path


def _error(response: Response) -> tuple[str, str]:
    assert response.status == "error" and response.error is not None, response
    return response.error.code, response.error.message


def test_artifact_larger_than_the_free_space_is_refused_before_any_chunk_and_the_next_job_runs(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    big = tmp_path / "big.tflite"
    big.write_bytes(os.urandom(8 * 1024 * 1024))
    model = minihost.offer(big, "tflite")
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="big", model=model, chunk_size=CHUNK, **FAST)
    )
    code, message = _error(minihost.wait_final(cmd, 60))
    print(f"\nthe host receives: [{code}] {message}")
    assert code == "insufficient_storage"
    assert f"it needs {model.size_bytes:,} bytes" in message
    assert f"{data_dir} has " in message and " bytes free" in message
    assert minihost.requested_indices(model.sha256) == []  # refused before the first request
    assert list((data_dir / "partial").iterdir()) == []

    small = minihost.offer(model_dir / "float.tflite", "tflite")
    ok = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="small", model=small, chunk_size=CHUNK, **FAST)
    )
    result = from_data(result_of(minihost.wait_final(ok, 60)), BenchmarkResult)
    assert result.model_sha256 == small.sha256


def test_command_arriving_on_a_disk_filled_by_another_program_is_answered_with_insufficient_storage(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    small_fs: Path,
) -> None:
    agent = start_agent()
    filler = fill(small_fs)
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    refused = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="full", model=model, chunk_size=CHUNK, **FAST)
    )
    response = minihost.wait_final(refused, 30)
    code, message = _error(response)
    print(f"\nthe host receives: [{code}] {message}")
    assert code == "insufficient_storage"
    assert "No space left on device" in message and "bytes free on" in message
    assert response.data == {"job_id": "full"}
    assert agent.running

    filler.unlink()
    retried = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="again", model=model, chunk_size=CHUNK, **FAST)
    )
    result = from_data(result_of(minihost.wait_final(retried, 60)), BenchmarkResult)
    assert result.model_sha256 == model.sha256


def _sparse_partial(data_dir: Path, sha256: str, size: int) -> None:
    """What a filesystem that cannot preallocate leaves: a sparse .part and an empty bitmap."""
    partial = data_dir / "partial"
    with open(partial / f"{sha256}.part", "wb") as handle:
        handle.truncate(size)
    bits = bytes((chunk_count(size, CHUNK) + 7) // 8)
    (partial / f"{sha256}.have").write_bytes(struct.pack("!4sIQ", b"ETH1", CHUNK, size) + bits)


def test_chunk_write_failing_with_enospc_fails_the_transfer_at_once_and_removes_the_partial(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
    small_fs: Path,
) -> None:
    # A long transfer timeout: only the ENOSPC itself can end this transfer within the test.
    start_agent(["--xfer-retry-s", "0.3", "--xfer-timeout-s", "600", "--max-store-mb", "4"])
    blob = tmp_path / "model.tflite"
    blob.write_bytes(os.urandom(2 * 1024 * 1024))
    model = minihost.offer(blob, "tflite")
    _sparse_partial(data_dir, model.sha256, model.size_bytes)
    released = threading.Event()
    minihost.chunk_filter = lambda sha, index: released.is_set()
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="fill", model=model, chunk_size=CHUNK, **FAST)
    )
    minihost.wait_for(lambda: minihost.requested_indices(model.sha256), 30, "a chunk request")
    filler = fill(small_fs)  # another program takes the rest of the disk mid-transfer
    released.set()
    code, message = _error(minihost.wait_final(cmd, 60))
    print(f"\nthe host receives: [{code}] {message}")
    assert code == "insufficient_storage"
    assert f"the disk filled up during the transfer of {model.sha256[:12]}" in message
    assert "No space left on device" in message
    assert list((data_dir / "partial").iterdir()) == []

    filler.unlink()
    minihost.chunk_filter = None
    small = minihost.offer(model_dir / "float.tflite", "tflite")
    ok = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="next", model=small, chunk_size=CHUNK, **FAST)
    )
    assert from_data(result_of(minihost.wait_final(ok, 60)), BenchmarkResult).runs >= 3


@pytest.fixture
def full_outbox(tmp_path: Path) -> Iterator[Path]:
    """The agent's outbox on a one-page filesystem that is already full."""
    outbox = tmp_path / "agent" / "outbox"
    _mount_tmpfs(outbox, "4k")
    try:
        fill(outbox, ".filler")
        yield outbox
    finally:
        _unmount(outbox)


def test_result_the_full_outbox_cannot_store_is_sent_from_memory_until_acknowledged(
    model_dir: Path,
    tmp_path: Path,
    shared_broker_url: str,
    base_topic: str,
    device_id: str,
    full_outbox: Path,
) -> None:
    data_dir = tmp_path / "agent"
    with MiniHost(shared_broker_url, base_topic, auto_ack=False) as host:
        agent = AgentProcess(
            shared_broker_url, device_id, data_dir, base_topic, ["--outbox-retry-s", "0.5"]
        )
        with agent:
            agent.wait_online()
            model = host.offer(model_dir / "float.tflite", "tflite")
            cmd = host.send(
                device_id,
                "benchmark",
                BenchmarkCmd(job_id="mem", model=model, chunk_size=CHUNK, **FAST),
            )
            sent = host.wait_for(
                lambda: (found := host.finals(cmd)) and len(found) >= 2 and found,
                60,
                "the result re-sent",
            )
            first = sent[0].message  # type: ignore[index]
            assert {r.message.msg_id for r in sent} == {first.msg_id}  # type: ignore[union-attr]
            result = from_data(result_of(first.body), BenchmarkResult)
            assert result.model_sha256 == model.sha256
            assert [p.name for p in full_outbox.iterdir()] == [".filler"]
            assert "sending it from memory" in agent.log()

            host.ack(device_id, [first.msg_id])
            host.wait_for(
                lambda: "acknowledged by the host" in agent.log(), 30, "the acknowledgement"
            )
