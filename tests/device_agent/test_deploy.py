"""Deploys on a real agent: atomic switch of DATA_DIR/active, health check with automatic rollback,
recovery after a SIGKILL in the middle of an activation, ``rollback``, and replay refusal."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest

from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import Birth, DeployCmd, Response, RollbackCmd, decode
from shared.results import DeployResult, from_data
from shared.signing import save_public_key, sign_manifest
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost

HEALTH = dict(health_runs=5, timeout_s=60.0)


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model that loads and runs but answers NaN for every input: log of a negative number."""
    import litert_torch
    import torch

    class NanNet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.log(-torch.abs(self.fc(torch.flatten(x, 1))) - 1.0)

    path = tmp_path_factory.mktemp("nan") / "nan.tflite"
    litert_torch.convert(NanNet().eval(), (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return path


def deploy(
    host: MiniHost,
    device_id: str,
    model: ArtifactManifest,
    deploy_id: str,
    *,
    wait: bool = True,
    **options: Any,
) -> tuple[str, Response | None, DeployResult | None]:
    cmd_id = host.send(
        device_id, "deploy", DeployCmd(deploy_id=deploy_id, model=model, **{**HEALTH, **options})
    )
    if not wait:
        return cmd_id, None, None
    response = host.wait_final(cmd_id, 90)
    assert response.data is not None, msgspec.to_builtins(response)
    return cmd_id, response, from_data(response.data, DeployResult)


def active_sha(data_dir: Path, fmt: str = "tflite") -> str | None:
    path = data_dir / "active" / f"model.{fmt}"
    return sha256_file(path) if path.exists() else None


def test_good_deploy_commits_and_the_stable_active_path_holds_the_new_model(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    first = minihost.offer(model_dir / "float.tflite", "tflite")
    cmd_id, response, result = deploy(minihost, device_id, first, "d-first")
    assert response is not None and response.status == "ok"
    assert result is not None and result.outcome == "committed"
    assert result.active_sha256 == first.sha256 and result.previous_sha256 is None
    assert result.health is not None and result.health.passed
    assert result.health.checks == {"loads": True, "finite_outputs": True}
    assert active_sha(data_dir) == first.sha256
    manifest = msgspec.json.decode((data_dir / "active" / "manifest.json").read_bytes())
    assert manifest["sha256"] == first.sha256
    stages = [r.data["stage"] for r in minihost.responses_to(cmd_id) if r.status == "progress"]
    assert stages == ["accepted", "fetching", "staging", "health_check", "switching"]

    second = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
    _, _, result = deploy(minihost, device_id, second, "d-second", latency_budget_ms=10_000.0)
    assert result is not None and result.outcome == "committed"
    assert result.health is not None and result.health.checks["latency_within_budget"]
    assert (result.active_sha256, result.previous_sha256) == (second.sha256, first.sha256)
    assert active_sha(data_dir) == second.sha256
    assert sha256_file(data_dir / "previous" / "model.tflite") == first.sha256
    # The retained birth announces what is active now.
    birth_topic = minihost.topics.birth(device_id)
    minihost.wait_for(
        lambda: (
            birth_topic in minihost.retained
            and decode(minihost.retained[birth_topic]).body.active_sha256 == second.sha256
        ),  # type: ignore[union-attr]
        10,
        "birth with the new active model",
    )
    assert isinstance(decode(minihost.retained[birth_topic]).body, Birth)


@pytest.mark.parametrize("failure", ["impossible_latency_budget", "nan_outputs", "low_metric"])
def test_deploy_whose_health_check_fails_rolls_back_by_itself_and_keeps_the_old_model(
    failure: str,
    model_dir: Path,
    nan_model: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    good = minihost.offer(model_dir / "float.tflite", "tflite")
    _, _, result = deploy(minihost, device_id, good, "d-good")
    assert result is not None and result.outcome == "committed"

    options: dict[str, Any] = {}
    if failure == "impossible_latency_budget":
        bad = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
        options["latency_budget_ms"] = 1e-6
        failed_check = "latency_within_budget"
    elif failure == "nan_outputs":
        bad = minihost.offer(nan_model, "tflite")
        failed_check = "finite_outputs"
    else:
        bad = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
        options["eval_data"] = minihost.offer(model_dir / "eval.npz", "npz", "data")
        options["min_metric"] = 0.99  # the labels agree with the model on 3 of 4 samples only
        failed_check = "metric_at_least"
    _, response, result = deploy(minihost, device_id, bad, "d-bad", **options)
    assert response is not None and response.status == "error" and response.error is not None
    assert response.error.code == "health_check_failed"
    assert result is not None and result.outcome == "rolled_back"
    assert result.health is not None and not result.health.passed
    assert result.health.checks["loads"] and not result.health.checks[failed_check]
    assert result.active_sha256 == good.sha256
    assert active_sha(data_dir) == good.sha256
    assert not (data_dir / "releases" / bad.sha256).exists()


@pytest.mark.parametrize("point", ["before_switch", "after_switch_before_commit"])
def test_agent_killed_during_activation_restarts_with_a_whole_model_active_and_reports_once(
    point: str,
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    agent = start_agent()
    old = minihost.offer(model_dir / "float.tflite", "tflite")
    _, _, result = deploy(minihost, device_id, old, "d-old")
    assert result is not None and result.outcome == "committed"

    agent.restart(env={"EDGETAILOR_AGENT_CRASH_AT": point})
    agent.wait_online()
    new = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
    cmd_id, _, _ = deploy(minihost, device_id, new, "d-new", wait=False)
    assert agent.wait_exit(90) == 137
    assert minihost.finals(cmd_id) == []
    # Whatever the links say right after the kill, each points at a whole release.
    for link in ("active", "previous"):
        target = data_dir / link
        if target.exists():
            sha = os.readlink(target).rsplit("/", 1)[-1]
            assert sha256_file(target / "model.tflite") == sha

    agent.restart(env={})
    agent.wait_online()
    response = minihost.wait_final(cmd_id, 60)
    result = from_data(response.data, DeployResult)
    assert result.outcome == "rolled_back" and response.error is not None
    assert response.error.code == "interrupted"
    assert active_sha(data_dir) == old.sha256 == result.active_sha256
    assert not (data_dir / "deploy" / "inflight.json").exists()
    assert len({r.message.msg_id for r in minihost.finals(cmd_id)}) == 1

    # The device still deploys normally afterwards.
    _, _, again = deploy(minihost, device_id, new, "d-new-again")
    assert again is not None and again.outcome == "committed"
    assert active_sha(data_dir) == new.sha256


def test_rollback_restores_the_previous_model_and_refuses_a_deploy_that_is_not_active(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    first = minihost.offer(model_dir / "float.tflite", "tflite")
    nothing = minihost.wait_final(minihost.send(device_id, "rollback", RollbackCmd()), 30)
    assert nothing.error is not None and nothing.error.code == "nothing_to_roll_back"

    deploy(minihost, device_id, first, "d-1")
    second = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
    deploy(minihost, device_id, second, "d-2")

    wrong = minihost.wait_final(
        minihost.send(device_id, "rollback", RollbackCmd(deploy_id="d-1")), 30
    )
    assert wrong.status == "error" and wrong.error is not None and wrong.error.code == "not_active"
    assert active_sha(data_dir) == second.sha256

    cmd = minihost.send(device_id, "rollback", RollbackCmd(deploy_id="d-2", reason="test"))
    response = minihost.wait_final(cmd, 30)
    assert response.status == "ok"
    result = from_data(response.data, DeployResult)
    assert result.outcome == "restored"
    assert (result.active_sha256, result.previous_sha256) == (first.sha256, second.sha256)
    assert active_sha(data_dir) == first.sha256


SignFn = Callable[[Path, str, int], ArtifactManifest]


@pytest.fixture
def signed(
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
) -> SignFn:
    """Start an agent that pins the MiniHost's key explicitly; returns (file, precision, sequence)
    -> manifest offered by the MiniHost, addressed to that agent and signed with the key."""
    key = minihost.signer.private_key
    public = tmp_path / "host.pub"
    save_public_key(key.public_key(), public)
    start_agent(["--trust-key", str(public)])

    def sign(path: Path, precision: str, sequence: int) -> ArtifactManifest:
        manifest = minihost.offer(path, "tflite", precision)
        manifest = msgspec.structs.replace(manifest, target_device=device_id, sequence=sequence)
        return sign_manifest(manifest, key)

    return sign


def test_replayed_signed_deploy_with_a_lower_sequence_is_refused(
    model_dir: Path, signed: SignFn, minihost: MiniHost, device_id: str, data_dir: Path
) -> None:
    old = signed(model_dir / "int8.tflite", "int8", 1)
    current = signed(model_dir / "float.tflite", "fp32", 2)
    _, _, result = deploy(minihost, device_id, current, "d-seq2")
    assert result is not None and result.outcome == "committed"

    _, response, result = deploy(minihost, device_id, old, "d-replay")
    assert response is not None and response.error is not None
    assert response.error.code == "untrusted_manifest" and "sequence 1" in response.error.message
    assert result is not None and result.outcome == "failed"
    assert active_sha(data_dir) == current.sha256
    assert minihost.requested_indices(old.sha256) == []


def test_replaying_the_last_signed_deploy_after_a_rollback_is_refused(
    model_dir: Path, signed: SignFn, minihost: MiniHost, device_id: str, data_dir: Path
) -> None:
    first = signed(model_dir / "float.tflite", "fp32", 1)
    second = signed(model_dir / "int8.tflite", "int8", 2)
    assert deploy(minihost, device_id, first, "d-first")[2].outcome == "committed"
    assert deploy(minihost, device_id, second, "d-second")[2].outcome == "committed"
    rolled = minihost.wait_final(
        minihost.send(device_id, "rollback", RollbackCmd(deploy_id="d-second")), 30
    )
    assert rolled.status == "ok" and active_sha(data_dir) == first.sha256

    # A stranger on the broker replays the captured, validly signed deploy of `second`.
    _, response, _result = deploy(minihost, device_id, second, "d-second")
    assert response is not None and response.error is not None
    assert response.error.code == "untrusted_manifest" and "sequence 2" in response.error.message
    assert active_sha(data_dir) == first.sha256
