"""The host's chunk server over a real Mosquitto: fan-out, offsets, unknown artifacts. Every
device here has an open command naming the artifact (chunks go to no one else:
test_commands.py)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.fleet import Fleet
from host.store import Store
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import BenchmarkCmd, ChunkRequest
from shared.transfer import chunk_count
from tests.host.fleet_helpers import ScriptedDevice

CHUNK = 4096


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "blob.npz"
    path.write_bytes(os.urandom(5 * CHUNK + 123))
    return path


@pytest.fixture
def fleet(shared_broker_url: str, base_topic: str, tmp_path: Path) -> Iterator[Fleet]:
    with (
        Store(f"sqlite:///{tmp_path / 'host.db'}") as store,
        Fleet(shared_broker_url, base_topic, store=store, chunk_size=CHUNK, coalesce_s=1.0) as opened,
    ):  # fmt: skip
        opened.wait_synced()
        yield opened


@pytest.fixture
def devices(
    shared_broker_url: str, base_topic: str, fleet: Fleet
) -> Iterator[list[ScriptedDevice]]:
    pair = [ScriptedDevice(shared_broker_url, base_topic, f"dev-{i}") for i in range(2)]
    for device in pair:
        device.announce()  # its signed birth pins its key
        fleet.wait_for_device(device.device_id, 5)
    yield pair
    for device in pair:
        device.close()


def _offer_raw(fleet: Fleet, path: Path, devices: list[ScriptedDevice]) -> str:
    """Offer the file and record a command naming it for each device (published at once)."""
    sha = sha256_file(path)
    manifest = ArtifactManifest(
        sha256=sha, size_bytes=path.stat().st_size, format="npz", precision="data"
    )
    fleet.offer(path, manifest)
    for device in devices:
        body = BenchmarkCmd(job_id=fleet.commands.commands.new_id(), model=manifest)
        fleet.commands.send(device.device_id, body)
        device.next_command()  # published: its device may fetch the artifact now
    return sha


def test_two_devices_sent_a_command_for_an_artifact_get_each_chunk_published_once(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    fleet.chunks.coalesce_s = 30.0  # the wait ends when both have asked, not by time
    sha = _offer_raw(fleet, artifact, devices)
    for device in devices:
        device.watch_artifact(sha)
    for device in devices:
        device.send(
            fleet.topics.xfer_request(device.device_id),
            ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[0, 1]),
        )
    received = [sorted(c.index for c in device.drain_chunks()) for device in devices]
    assert received == [[0, 1], [0, 1]]  # each device got each chunk once, via the broker
    assert fleet.chunks.chunks_published == 2


def test_sending_a_benchmark_command_makes_the_host_expect_the_device_for_its_artifacts(
    fleet: Fleet, devices: list[ScriptedDevice], tmp_path: Path
) -> None:
    import numpy as np

    eval_file = tmp_path / "eval.npz"
    np.savez(eval_file, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4, dtype=np.int64))
    from host.commands.bench import submit_benchmark

    device = devices[0]
    submit_benchmark(fleet, device.device_id, eval_file)
    device.next_command()
    assert fleet.chunks.expected(sha256_file(eval_file)) == {device.device_id}


def test_a_device_asking_again_for_a_chunk_gets_it_again(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact, devices[:1])
    device = devices[0]
    device.watch_artifact(sha)
    request = ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[2])
    device.send(fleet.topics.xfer_request(device.device_id), request)
    assert [c.index for c in device.drain_chunks()] == [2]
    device.send(fleet.topics.xfer_request(device.device_id), request)  # it lost that copy
    assert [c.index for c in device.drain_chunks()] == [2]
    assert fleet.chunks.chunks_published == 2


def test_chunks_carry_the_bytes_at_their_offsets_and_rebuild_the_file(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact, devices[:1])
    device = devices[0]
    device.watch_artifact(sha)
    total = chunk_count(artifact.stat().st_size, CHUNK)
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=list(range(total))),
    )
    chunks = sorted(device.drain_chunks(), key=lambda c: c.index)
    assert [c.index for c in chunks] == list(range(total))
    assert all(c.total == total and c.offset == c.index * CHUNK and c.sha256 == sha for c in chunks)
    assert b"".join(c.payload for c in chunks) == artifact.read_bytes()


def _dropped(fleet: Fleet, reason: str) -> int:
    deadline = time.monotonic() + 5
    while not fleet.drop_counts().get(("xfer_req", reason)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return fleet.drop_counts().get(("xfer_req", reason), 0)


def test_a_request_for_an_artifact_no_command_names_is_dropped_and_counted(
    fleet: Fleet, devices: list[ScriptedDevice]
) -> None:
    device = devices[0]
    unknown = "ab" * 32
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=unknown, chunk_size=CHUNK, indices=[0]),
        msg_id="req-unknown-1",
    )
    assert _dropped(fleet, "no_command") == 1
    assert fleet.chunks.chunks_published == 0


def test_a_request_past_the_last_chunk_publishes_nothing_and_is_counted_as_bad(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact, devices[:1])
    device = devices[0]
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[0, 99]),
    )
    assert _dropped(fleet, "bad_request") == 1
    assert fleet.chunks.chunks_published == 0


def test_an_offered_file_deleted_since_is_dropped_as_unknown_artifact(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact, devices[:1])
    artifact.unlink()
    device = devices[0]
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[0]),
        msg_id="req-gone-1",
    )
    assert _dropped(fleet, "unknown_artifact") == 1
    assert fleet.chunks.chunks_published == 0


def test_offering_a_file_again_after_it_changed_checks_it_again(
    fleet: Fleet, artifact: Path
) -> None:
    from shared.errors import IntegrityError
    from shared.manifest import ArtifactManifest

    manifest = ArtifactManifest(
        sha256=sha256_file(artifact),
        size_bytes=artifact.stat().st_size,
        format="npz",
        precision="data",
    )
    assert fleet.offer(artifact, manifest).sha256 == manifest.sha256
    assert fleet.offer(artifact, manifest).sha256 == manifest.sha256
    data = bytearray(artifact.read_bytes())
    data[0] ^= 0xFF
    artifact.write_bytes(bytes(data))  # same size, other bytes
    with pytest.raises(IntegrityError, match="does not match its manifest"):
        fleet.offer(artifact, manifest)
