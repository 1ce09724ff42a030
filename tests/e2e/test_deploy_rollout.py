"""Acceptance: deploys from the host to real agents over real Mosquitto — a staged rollout that
aborts and rolls back its failing wave, signed per-device manifests with replay refusal, and the
``deploy --campaign`` / ``rollback`` commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from host.campaign import CampaignSpec
from host.deploy import Deployer, DeployTarget
from host.fleet import Fleet
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo
from shared.hashing import sha256_file
from shared.messages import DeployCmd, decode
from shared.results import DeployResult
from shared.signing import generate_key, save_private_key, save_public_key
from tests.agents import AgentProcess
from tests.e2e.conftest import AgentFactory, DigitsArtifacts, cli_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


@pytest.fixture(scope="module")
def new_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second small digits-shaped model, so a deploy changes what is active."""
    import litert_torch
    import torch

    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    path = tmp_path_factory.mktemp("new") / "digits_linear.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return path


def active_sha(agent: AgentProcess) -> str | None:
    path = agent.data_dir / "active" / "model.tflite"
    return sha256_file(path) if path.exists() else None


def test_staged_rollout_aborts_on_a_failing_second_wave_rolls_it_back_and_skips_the_third(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, new_model: Path, tmp_path: Path, db_url: str,
) -> None:  # fmt: skip
    devices = ["wave-a", "wave-b", "wave-c", "wave-d"]
    agents = {d: start_agent(d, shared_broker_url) for d in devices}
    old_sha, new_sha = sha256_file(digits_model.tflite), sha256_file(new_model)
    with Fleet(shared_broker_url, base_topic, store=db_url) as fleet:
        deployer = Deployer(fleet, health_runs=5, timeout_s=60.0)
        baseline = deployer.rollout(
            [
                DeployTarget(d, digits_model.tflite, eval_path=digits_model.eval_npz)
                for d in devices
            ],
            "100%",
        )
        assert baseline.ok, baseline.to_dict()
        assert {active_sha(a) for a in agents.values()} == {old_sha}

        # wave-c's budget cannot be met: its health check fails, the device rolls back by itself.
        targets = [
            DeployTarget(d, new_model, latency_budget_ms=1e-6 if d == "wave-c" else 10_000.0)
            for d in devices
        ]
        result = deployer.rollout(targets, "1,50%,100%", max_failures=0)
        stored = {t.device_id: t for t in deployer.dstore.targets(result.rollout_id)}

    assert result.waves == [["wave-a"], ["wave-b", "wave-c"], ["wave-d"]]
    assert result.aborted and result.aborted_wave == 2 and not result.ok
    assert result.skipped == ["wave-d"]
    outcomes = {o.device_id: o for o in result.outcomes}
    assert set(outcomes) == {"wave-a", "wave-b", "wave-c"}  # the third wave never started
    assert outcomes["wave-a"].outcome == "committed"
    assert outcomes["wave-b"].outcome == "wave_rolled_back"
    assert outcomes["wave-c"].outcome == "rolled_back"
    assert outcomes["wave-c"].health is not None
    assert outcomes["wave-c"].health["checks"]["latency_within_budget"] is False
    assert "wave 2: 1 of 2 devices failed" in result.reason
    assert active_sha(agents["wave-a"]) == new_sha
    for device in ("wave-b", "wave-c", "wave-d"):
        assert active_sha(agents[device]) == old_sha, device
    assert not (agents["wave-d"].data_dir / "releases" / new_sha).exists()
    assert {d: t.state for d, t in stored.items()} == {
        "wave-a": "committed", "wave-b": "wave_rolled_back", "wave-c": "rolled_back",
        "wave-d": "skipped",
    }  # fmt: skip


def test_signed_deploys_carry_growing_per_device_sequences_and_a_replayed_one_is_refused(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, new_model: Path, tmp_path: Path, db_url: str,
) -> None:  # fmt: skip
    key = generate_key()
    save_private_key(key, tmp_path / "host.key")
    save_public_key(key.public_key(), tmp_path / "host.pub")
    agent = start_agent(
        "signed-a", shared_broker_url, extra_args=["--trust-key", str(tmp_path / "host.pub")]
    )
    with Fleet(
        shared_broker_url, base_topic, store=db_url,
        signing_key=tmp_path / "host.key",
    ) as fleet:  # fmt: skip
        deployer = Deployer(fleet, health_runs=3, timeout_s=60.0)
        sent: list[DeployCmd] = []
        fleet_publish = fleet.publish_command

        def recording_publish(device_id: str, name: str, payload: bytes) -> None:
            body = decode(payload).body
            if isinstance(body, DeployCmd):
                sent.append(body)
            fleet_publish(device_id, name, payload)

        fleet.publish_command = recording_publish  # type: ignore[method-assign]
        first = deployer.deploy_one(DeployTarget("signed-a", digits_model.tflite))
        second = deployer.deploy_one(DeployTarget("signed-a", new_model))
        assert (first.outcome, second.outcome) == ("committed", "committed")
        assert second.sequence > first.sequence
        assert all(c.model.target_device == "signed-a" and c.model.signature for c in sent)

        # The first deploy again, in a fresh, validly signed envelope: its manifest's deploy
        # sequence is older than the committed one (a captured envelope itself is refused as a
        # replay: tests/device_agent/test_signed_commands.py).
        replay = msgspec.structs.replace(sent[0], deploy_id="replayed")
        sent_again = fleet.commands.send("signed-a", replay)
        answered = fleet.commands.wait(sent_again.command_id, 60)
    assert answered.state == "failed" and answered.error_code == "untrusted_manifest"
    assert "replay or rollback refused" in (answered.error_message or "")
    result = answered.result_as(DeployResult)
    assert result is not None and result.active_sha256 == sha256_file(new_model)
    assert active_sha(agent) == sha256_file(new_model)


def _run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def test_deploy_campaign_cli_deploys_the_selection_and_rollback_cli_restores_the_previous(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, new_model: Path, tmp_path: Path, db_url: str,
) -> None:  # fmt: skip
    agent = start_agent("cli-a", shared_broker_url)
    db = db_url
    work = tmp_path / "campaign"
    work.mkdir()
    os.link(digits_model.eval_npz, work / "eval.npz")
    with Store(db) as store:
        cstore = CampaignStore(store)
        cstore.create_campaign("camp-cli", CampaignSpec(
            model="builtin:digits_cnn", data="builtin:digits",
            constraints=("latency_p90_ms<=10000",),
        ).to_dict())  # fmt: skip
        for position, (cid, path) in enumerate(
            [("orig", digits_model.tflite), ("linear", new_model)]
        ):
            cstore.put_candidate(CandidateInfo(
                campaign_id="camp-cli", candidate_id=cid, position=position, recipe_name=cid,
                recipe=[], format="tflite", precision="fp32", status="ok", reason=None,
                sha256=sha256_file(path), path=str(path), size_bytes=path.stat().st_size,
                host_metrics={}, created=time.time(),
            ))  # fmt: skip
        cstore.update_campaign(
            "camp-cli", status="done", state={"work_dir": str(work)},
            selection={"cli-a": {"candidate": "orig", "reason": "best"}},
        )  # fmt: skip
    common = ["--broker", shared_broker_url, "--base-topic", base_topic, "--db", db, "--json"]

    done = _run_cli("deploy", "--campaign", "camp-cli", "--health-runs", "3", *common)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["ok"] and [d["outcome"] for d in doc["devices"]] == ["committed"]
    assert doc["devices"][0]["label"] == "orig"
    health = doc["devices"][0]["health"]
    # The campaign's latency constraint is the budget; its eval set is scored in the health check.
    assert health["checks"]["latency_within_budget"] is True
    assert health["metric"] == "accuracy" and health["metric_value"] > 0.5
    assert active_sha(agent) == sha256_file(digits_model.tflite)

    done = _run_cli(
        "deploy", "--model", str(new_model), "--devices", "cli-a", "--health-runs", "3", *common
    )
    assert done.returncode == 0, done.stderr
    assert active_sha(agent) == sha256_file(new_model)

    done = _run_cli("rollback", "--device", "cli-a", *common)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    assert doc["outcome"] == "restored"
    assert doc["active_sha256"] == sha256_file(digits_model.tflite) == active_sha(agent)

    done = _run_cli("deploy", "--campaign", "no-such", *common)
    assert done.returncode == 2 and "no campaign 'no-such'" in done.stderr


def test_demo_deploys_each_device_choice_from_a_campaign_outcome_document(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, new_model: Path, tmp_path: Path,
) -> None:  # fmt: skip
    from host.deploy import deploy_selection

    agents = {d: start_agent(d, shared_broker_url) for d in ("demo-a", "demo-b")}
    outcome = {
        "campaign": {"work_dir": str(tmp_path / "missing"), "constraints": []},
        "candidates": [
            {"id": "orig", "path": str(digits_model.tflite)},
            {"id": "linear", "path": str(new_model)},
        ],
        "selection": {
            "demo-a": {"candidate": "orig"},
            "demo-b": {"candidate": "linear"},
            "demo-c": {"candidate": None, "reason": "nothing feasible"},
        },
    }
    with Fleet(shared_broker_url, base_topic, store=f"sqlite:///{tmp_path / 'host.db'}") as fleet:
        summary = deploy_selection(outcome, fleet=fleet)
    assert summary == {"demo-a": "committed (orig)", "demo-b": "committed (linear)"}
    assert active_sha(agents["demo-a"]) == sha256_file(digits_model.tflite)
    assert active_sha(agents["demo-b"]) == sha256_file(new_model)
