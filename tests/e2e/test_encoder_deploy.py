"""A sentence encoder (token ids + attention mask, NaN for an all-zero mask, as BERT-family
encoders give) goes through a campaign whose choice is deployed: the deploy's health check runs the
shipped sentences, scores cosine, and commits. Before, the health check fed all-zero integer inputs,
the all-zero mask gave NaN, and the campaign's own choice for an encoder was always rolled back."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.campaign import CampaignSpec, run_campaign
from host.deploy import Deployer, targets_from_campaign
from host.fleet import Fleet
from host.store import Store
from shared.hashing import sha256_file
from tests.agents import AgentProcess


@pytest.mark.slow
def test_an_encoders_campaign_choice_deploys_and_passes_its_health_check_on_the_shipped_sentences(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps(
            [
                {"name": "fp32", "steps": []},
                {"name": "int8dyn", "steps": [{"technique": "int8_dynamic"}]},
            ]
        )
    )
    agent = AgentProcess(
        shared_broker_url, "enc-dep", tmp_path / "agent", base_topic,
        extra_args=["--telemetry-interval", "1", "--threads", "1"],
    )  # fmt: skip
    spec = CampaignSpec(
        model="tests.taskmodels:encoder",
        data="tests.taskmodels:sentences",
        space=str(space),
        devices=("enc-dep",),
        constraints=("metric_drop<=0.05",),
        objective="min_size",
        runs=5,
        min_s=0.1,
        warmup_s=0.05,
        job_timeout_s=60.0,
    )
    with (
        agent,
        Store(f"sqlite:///{tmp_path / 'host.db'}") as store,
        Fleet(shared_broker_url, base_topic, store=store) as fleet,
    ):
        agent.wait_online(timeout=60)
        outcome = run_campaign(spec, store, fleet, campaign_id="enc", work_dir=tmp_path / "w")
        assert outcome["campaign"]["task"] == "embedding"
        pick = outcome["selection"]["enc-dep"]
        assert pick["candidate"] == "int8dyn", pick  # the smaller file, within the constraint

        targets = targets_from_campaign(store, "enc")
        assert [t.eval_path for t in targets] == [tmp_path / "w" / "eval.npz"]
        report = Deployer(fleet, health_runs=3, timeout_s=60.0).rollout(targets, waves="100%")

    [result] = report.outcomes
    assert result.outcome == "committed", result
    health = result.health
    assert health is not None and health["passed"], health
    assert health["checks"]["finite_outputs"]
    # Scored on the shipped sentences, as the campaign scored them: not on synthetic inputs.
    assert health["metric"] == "cosine" and health["metric_value"] > 0.95
    active = agent.data_dir / "active" / "model.tflite"
    assert sha256_file(active.resolve()) == sha256_file(targets[0].artifact)
