"""Tampered artifacts and manifests are refused before any runtime sees them; the store keeps what
it had.

The 1,000-flip loops drive the agent's own verification in-process (store commit, chunk receiver,
manifest decoding and signature check; the loops live in bench/faults.py, which runs them too); the
named attacks then go through a running agent with --trust-key, which must answer each with an
error code and store nothing new.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from bench.faults import run_tamper, store_snapshot
from shared.manifest import ArtifactManifest
from shared.messages import BenchmarkCmd
from shared.signing import generate_key, save_public_key, sign_manifest
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, Offer, result_of

FLIPS = 1000
FAST = dict(warmup_runs=1, warmup_s=0.0, runs=2, min_s=0.0, timeout_s=30.0, chunk_size=1024)


@pytest.fixture(scope="module")
def tamper_counts(model_dir: Path) -> dict:
    # The receiver logs every rejected chunk; a thousand warnings would only slow the loop down.
    fetch_logger = logging.getLogger("device_agent.fetch")
    level = fetch_logger.level
    fetch_logger.setLevel(logging.ERROR)
    try:
        return run_tamper((model_dir / "float.tflite").read_bytes(), FLIPS, seed=1)
    finally:
        fetch_logger.setLevel(level)


def test_a_thousand_single_bit_flips_of_an_artifact_all_fail_the_hash_and_store_nothing(
    tamper_counts: dict,
) -> None:
    flips = tamper_counts["artifact_flips"]
    assert flips["tried"] == FLIPS
    assert flips["rejected"] == FLIPS and flips["reasons"] == {"hash_mismatch": FLIPS}
    assert flips["accepted"] == 0 and flips["store_changed"] == 0
    assert tamper_counts["flip_store_files"] == []
    assert tamper_counts["active_unchanged"] is True


def test_a_thousand_single_bit_flips_of_chunk_frames_are_all_dropped_by_the_receiver(
    tamper_counts: dict,
) -> None:
    flips = tamper_counts["chunk_flips"]
    assert flips["tried"] == FLIPS and flips["rejected"] == FLIPS and flips["accepted"] == 0


def test_a_thousand_single_bit_flips_of_a_signed_manifest_fail_decoding_or_the_signature(
    tamper_counts: dict,
) -> None:
    flips = tamper_counts["manifest_flips"]
    assert flips["tried"] == FLIPS and flips["accepted"] == 0
    # A flip in the 17th digit of a float can decode to the same double: nothing signed changed.
    assert flips["rejected"] + flips["unchanged"] == FLIPS
    assert flips["unchanged"] <= 5
    assert flips["reasons"]["decode"] > 0 and flips["reasons"]["signature"] > 0


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("unsigned", "not signed"),
        ("wrong_key", "not signed by the trusted host key"),
        ("replayed_older", "replay or rollback refused"),
        ("expired", "expired"),
        ("other_device", "is addressed to"),
        ("truncated", "transfer incomplete"),
        ("oversized", "transfer incomplete"),
        ("oversized_manifest", "size_bytes"),
    ],
)
def test_each_named_attack_is_refused_by_the_agents_own_checks(
    tamper_counts: dict, case: str, expected: str
) -> None:
    assert expected in tamper_counts["policy"][case]


# -- the same attacks through a running agent ----------------------------------------------------
@pytest.fixture
def host_key(minihost: MiniHost) -> object:
    return minihost.signer.private_key  # the agent pins the key the MiniHost signs commands with


@pytest.fixture
def trusting_agent(
    host_key: object, tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> Iterator[AgentProcess]:
    public = tmp_path / "host.pub"
    save_public_key(host_key.public_key(), public)  # type: ignore[attr-defined]
    yield start_agent(
        ["--trust-key", str(public), "--xfer-timeout-s", "3", "--xfer-retry-s", "0.5"]
    )


def _signed_for(
    host_key: object, manifest: ArtifactManifest, device_id: str, **changes: object
) -> ArtifactManifest:
    fields: dict[str, object] = {
        "target_device": device_id,
        "expires": time.time() + 600,
        **changes,
    }
    return sign_manifest(msgspec.structs.replace(manifest, **fields), host_key)  # type: ignore[arg-type]


def test_tampered_jobs_through_a_running_agent_fail_with_a_code_and_the_stored_model_is_untouched(
    trusting_agent: AgentProcess,
    host_key: object,
    model_dir: Path,
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
    tmp_path: Path,
) -> None:
    good_path = model_dir / "float.tflite"
    good = _signed_for(host_key, minihost.offer(good_path, "tflite"), device_id)
    first = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="good", model=good, **FAST))
    assert result_of(minihost.wait_final(first, 60))["model_sha256"] == good.sha256
    stored = store_snapshot(data_dir / "store")
    assert stored == {f"{good.sha256}.tflite": good.sha256}

    # The attacks target another model, which the device does not have yet: it must fetch bytes.
    other_path = model_dir / "int8.tflite"
    other = _signed_for(host_key, minihost.offer(other_path, "tflite", "int8"), device_id)
    data = other_path.read_bytes()
    flipped, truncated, oversized = (tmp_path / n for n in ("flip.bin", "trunc.bin", "big.bin"))
    flipped.write_bytes(data[:100] + bytes([data[100] ^ 0x10]) + data[101:])
    truncated.write_bytes(data[:-100])
    oversized.write_bytes(data + bytes(3000))
    cases: dict[str, tuple[ArtifactManifest, Path | None, str]] = {
        "expired": (_signed_for(host_key, other, device_id, expires=time.time() - 5), None,
                    "untrusted_manifest"),
        "other_device": (_signed_for(host_key, other, device_id, target_device="someone-else"),
                         None, "untrusted_manifest"),
        "wrong_key": (sign_manifest(other, generate_key()), None, "untrusted_manifest"),
        # The host serves bytes that are not the ones the signed manifest describes.
        "flipped_bit": (other, flipped, "hash_mismatch"),
        "truncated": (other, truncated, "transfer_timeout"),
        "oversized": (other, oversized, "transfer_timeout"),
    }  # fmt: skip
    for case, (manifest, served, code) in cases.items():
        if served is not None:
            minihost.offers[other.sha256] = Offer(served, served.stat().st_size)
        cmd = minihost.send(
            device_id, "benchmark", BenchmarkCmd(job_id=f"t-{case}", model=manifest, **FAST)
        )
        failed = minihost.wait_final(cmd, 30)
        assert failed.status == "error" and failed.error is not None, case
        assert failed.error.code == code, (case, failed.error)
        assert store_snapshot(data_dir / "store") == stored, case
        if served is None:
            assert minihost.requested_indices(other.sha256) == [], "refused before download"
    assert trusting_agent.running
    # The good model is still there and still runs.
    again = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="again", model=good, **FAST))
    assert result_of(minihost.wait_final(again, 60))["transfers"][0]["already_stored"] is True
