"""Acceptance: artifact transfers survive a broker SIGKILL, and a wrong hash is refused."""

from __future__ import annotations

import struct
import time
from pathlib import Path

import msgspec
import pytest

from host.commands import CommandStore
from host.commands.bench import submit_benchmark, wait_benchmark
from host.errors import JobFailedError
from host.fleet import Fleet
from host.store import Store
from shared.hashing import sha256_file
from shared.transfer import chunk_count
from tests.brokers import MosquittoProcess
from tests.e2e.conftest import AgentFactory, DigitsArtifacts, WideArtifacts

pytestmark = pytest.mark.slow

SMALL_CHUNK = 8 * 1024
# The agent's bitmap file (device_agent/store.py): magic, chunk size, file size, then one bit/chunk.
HAVE_HEADER = struct.Struct("!4sIQ")


def _stored_chunks(have_file: Path, total: int) -> set[int]:
    bits = have_file.read_bytes()[HAVE_HEADER.size :]
    return {i for i in range(total) if bits[i >> 3] & (1 << (i & 7))}


def test_a_broker_killed_mid_transfer_the_transfer_resumes_without_asking_for_stored_chunks(
    private_broker: MosquittoProcess, start_agent: AgentFactory, base_topic: str,
    wide_model: WideArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent("board-r", private_broker.url, extra_args=["--xfer-retry-s", "1"])
    total = chunk_count(wide_model.size_bytes, SMALL_CHUNK)
    assert wide_model.size_bytes > 4 * 1024 * 1024 and total > 400
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    with Fleet(private_broker.url, base_topic, store=store, chunk_size=SMALL_CHUNK) as fleet:
        job = submit_benchmark(fleet, "board-r", wide_model.tflite, runs=5, timeout_s=120)
        sha = job_sha = sha256_file(wide_model.tflite)
        deadline = time.monotonic() + 60
        while fleet.chunks.chunks_published < total // 4:
            assert time.monotonic() < deadline, "the transfer never started"
            time.sleep(0.01)

        private_broker.kill()
        killed_at = time.time()
        have_file = agent.data_dir / "partial" / f"{sha}.have"
        # The agent records received chunks on disk in batches, at least once a second.
        while not (stored_before := _stored_chunks(have_file, total)):
            assert time.monotonic() < deadline, "no chunk was ever recorded on disk"
            time.sleep(0.05)
        assert len(stored_before) < total, "the broker must die in the middle of the transfer"
        private_broker.start()

        result = wait_benchmark(fleet, job, 180)

    model_transfer = next(t for t in result.transfers if t.sha256 == job_sha)
    assert not model_transfer.already_stored
    assert model_transfer.chunks_total == total
    assert model_transfer.chunks_written == total  # every chunk written exactly once
    stored = agent.data_dir / "store" / f"{sha}.tflite"
    assert sha256_file(stored) == sha
    asked_after = {
        index
        for record in fleet.chunks.requests
        if record.sent_at is not None and record.sent_at > killed_at
        for index in record.indices
    }
    assert asked_after, "after the restart the agent must ask for the chunks it lacks"
    assert not asked_after & stored_before, sorted(asked_after & stored_before)[:10]
    assert CommandStore(store).get(job).response_msg_id is not None  # type: ignore[union-attr]
    store.close()


def test_a_manifest_with_the_wrong_hash_fails_with_hash_mismatch_and_stores_nothing(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    from host.artifacts import manifest_for_file

    agent = start_agent("board-h", shared_broker_url)
    real = manifest_for_file(digits_model.tflite)
    wrong_sha = "0" * 63 + "1"
    lying = msgspec.structs.replace(real, sha256=wrong_sha)
    store = f"sqlite:///{tmp_path / 'host.db'}"
    with Fleet(shared_broker_url, base_topic, store=store, chunk_size=SMALL_CHUNK) as fleet:
        job = submit_benchmark(
            fleet, "board-h", digits_model.tflite, model_manifest=lying, runs=5,
            verify_artifacts=False,
        )  # fmt: skip
        with pytest.raises(JobFailedError, match="hash_mismatch") as failure:
            wait_benchmark(fleet, job, 120)
    assert failure.value.code == "hash_mismatch"
    assert list((agent.data_dir / "store").glob(f"{wrong_sha}*")) == []
    assert list((agent.data_dir / "partial").glob(f"{wrong_sha}*")) == []


def test_offering_a_file_that_does_not_match_its_manifest_is_refused_on_the_host(
    shared_broker_url: str, base_topic: str, digits_model: DigitsArtifacts
) -> None:
    from host.artifacts import manifest_for_file
    from shared.errors import IntegrityError

    lying = msgspec.structs.replace(manifest_for_file(digits_model.tflite), sha256="f" * 64)
    with (
        Fleet(shared_broker_url, base_topic) as fleet,
        pytest.raises(IntegrityError, match="does not match its manifest"),
    ):
        fleet.offer(digits_model.tflite, lying)
