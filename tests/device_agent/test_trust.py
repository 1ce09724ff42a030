"""With --trust-key the agent refuses unsigned or foreign-signed manifests before any download."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult, from_data
from shared.signing import generate_key, save_public_key, sign_manifest
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)


@pytest.fixture
def host_key(minihost: MiniHost) -> object:
    return minihost.signer.private_key


@pytest.fixture
def trusting_agent(
    host_key: object, tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> AgentProcess:
    public = tmp_path / "host.pub"
    save_public_key(host_key.public_key(), public)  # type: ignore[attr-defined]
    return start_agent(["--trust-key", str(public)])


@pytest.mark.parametrize("signer", ["unsigned", "other_key"])
def test_manifest_not_signed_by_the_trusted_key_is_refused_before_download(
    signer: str,
    trusting_agent: AgentProcess,
    model_dir: Path,
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    model = minihost.offer(model_dir / "float.tflite", "tflite", sign=False)
    if signer == "other_key":
        model = sign_manifest(model, generate_key())
    cmd = minihost.send(
        device_id, "benchmark", BenchmarkCmd(job_id="untrusted", model=model, **FAST)
    )
    failed = minihost.wait_final(cmd, 30)
    assert failed.status == "error" and failed.error is not None
    assert failed.error.code == "untrusted_manifest"
    assert minihost.chunk_requests == []
    assert (
        list((data_dir / "partial").iterdir()) == [] and list((data_dir / "store").iterdir()) == []
    )


def test_manifest_signed_by_the_trusted_key_is_fetched_and_benchmarked(
    trusting_agent: AgentProcess,
    host_key: object,
    model_dir: Path,
    minihost: MiniHost,
    device_id: str,
) -> None:
    model = sign_manifest(minihost.offer(model_dir / "float.tflite", "tflite"), host_key)  # type: ignore[arg-type]
    cmd = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="trusted", model=model, **FAST))
    result = from_data(result_of(minihost.wait_final(cmd, 60)), BenchmarkResult)
    assert result.model_sha256 == model.sha256 and minihost.chunk_requests
