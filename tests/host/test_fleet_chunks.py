"""The host's chunk server over a real Mosquitto: fan-out, offsets, unknown artifacts."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.fleet import Fleet
from shared.hashing import sha256_file
from shared.messages import ChunkRequest
from shared.transfer import chunk_count
from tests.host.fleet_helpers import ScriptedDevice

CHUNK = 4096


@pytest.fixture
def artifact(tmp_path: Path) -> Path:
    path = tmp_path / "blob.npz"
    path.write_bytes(os.urandom(5 * CHUNK + 123))
    return path


@pytest.fixture
def fleet(shared_broker_url: str, base_topic: str) -> Iterator[Fleet]:
    with Fleet(shared_broker_url, base_topic, chunk_size=CHUNK, coalesce_s=1.0) as opened:
        opened.wait_synced()
        yield opened


@pytest.fixture
def devices(shared_broker_url: str, base_topic: str) -> Iterator[list[ScriptedDevice]]:
    pair = [ScriptedDevice(shared_broker_url, base_topic, f"dev-{i}") for i in range(2)]
    yield pair
    for device in pair:
        device.close()


def _offer_raw(fleet: Fleet, path: Path) -> str:
    sha = sha256_file(path)
    fleet.chunks.offer(sha, path)
    return sha


def test_two_devices_sent_a_command_for_an_artifact_get_each_chunk_published_once(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    fleet.chunks.coalesce_s = 30.0  # the wait ends when both have asked, not by time
    sha = _offer_raw(fleet, artifact)
    for device in devices:
        fleet.chunks.expect(sha, device.device_id)  # what send_command does for cmd.deploy
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
    device = devices[0]
    device.announce()
    fleet.submit_benchmark(device.device_id, eval_file)
    assert fleet.chunks.expected(sha256_file(eval_file)) == {device.device_id}


def test_a_device_asking_again_for_a_chunk_gets_it_again(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact)
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
    sha = _offer_raw(fleet, artifact)
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


def test_a_request_for_an_unknown_artifact_is_answered_with_unknown_artifact(
    fleet: Fleet, devices: list[ScriptedDevice]
) -> None:
    device = devices[0]
    unknown = "ab" * 32
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=unknown, chunk_size=CHUNK, indices=[0]),
        msg_id="req-unknown-1",
    )
    answer = device.responses.get(timeout=5)
    assert answer.corr_id == "req-unknown-1"
    assert answer.body.status == "error" and answer.body.error.code == "unknown_artifact"
    assert fleet.chunks.chunks_published == 0


def test_a_request_past_the_last_chunk_publishes_nothing_and_says_bad_request(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact)
    device = devices[0]
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[0, 99]),
    )
    answer = device.responses.get(timeout=5)
    assert answer.body.error.code == "bad_request"
    assert fleet.chunks.chunks_published == 0


def test_an_offered_file_deleted_since_is_answered_with_unknown_artifact(
    fleet: Fleet, devices: list[ScriptedDevice], artifact: Path
) -> None:
    sha = _offer_raw(fleet, artifact)
    artifact.unlink()
    device = devices[0]
    device.send(
        fleet.topics.xfer_request(device.device_id),
        ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=[0]),
        msg_id="req-gone-1",
    )
    answer = device.responses.get(timeout=5)
    assert answer.corr_id == "req-gone-1"
    assert answer.body.error.code == "unknown_artifact" and "re-offer" in answer.body.error.message


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
