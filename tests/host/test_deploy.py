"""Host deploy planning: wave parsing and splitting, per-device sequences, campaign targets."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from host.campaign import CampaignSpec
from host.deploy import (
    DeployError,
    DeploymentStore,
    parse_waves,
    plan_waves,
    targets_from_campaign,
)
from host.errors import ConfigError
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo


def test_waves_of_one_then_half_then_the_rest_split_four_devices_one_two_one() -> None:
    plan = plan_waves(["a", "b", "c", "d"], parse_waves("1,50%,100%"))
    assert plan == [["a"], ["b", "c"], ["d"]]


def test_last_wave_takes_every_device_left_and_empty_waves_are_dropped() -> None:
    assert plan_waves(["a", "b", "c", "d", "e"], parse_waves("1,25%")) == [
        ["a"],
        ["b", "c", "d", "e"],
    ]
    assert plan_waves(["a"], parse_waves("1,25%,100%")) == [["a"]]
    assert plan_waves(["a", "b"], parse_waves("100%")) == [["a", "b"]]


@pytest.mark.parametrize("text", ["", "0", "1.5", "150%", "abc", "1,,x%"])
def test_bad_wave_specs_are_refused_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match="1,25%,100%"):
        parse_waves(text)


def test_sequences_grow_per_device_and_survive_reopening_the_store(db_url: str) -> None:
    with Store(db_url) as store:
        dstore = DeploymentStore(store)
        first, second = dstore.next_sequence("pi-1"), dstore.next_sequence("pi-1")
        other = dstore.next_sequence("pi-2")
    assert second > first and other >= 1
    assert first > 1_700_000_000_000  # milliseconds since the epoch: past 32 bits on every store
    with Store(db_url) as store:
        assert DeploymentStore(store).next_sequence("pi-1") > second


def _campaign(store: Store, tmp_path: Path, *, selection: dict | None) -> str:
    cstore = CampaignStore(store)
    artifact = tmp_path / "cand.tflite"
    artifact.write_bytes(b"not really a model, never parsed here")
    (tmp_path / "eval.npz").write_bytes(b"x")
    cstore.create_campaign("camp-1", CampaignSpec(
        model="builtin:digits_cnn", data="builtin:digits",
        constraints=("latency_p90_ms<=20", "accuracy_drop<=0.02"),
    ).to_dict())  # fmt: skip
    cstore.update_campaign("camp-1", state={"work_dir": str(tmp_path)}, selection=selection)
    cstore.put_candidate(CandidateInfo(
        campaign_id="camp-1", candidate_id="prune50", position=0, recipe_name="prune50",
        recipe=[], format="tflite", precision="fp32", status="ok", reason=None,
        sha256="0" * 64, path=str(artifact), size_bytes=10, host_metrics={}, created=time.time(),
    ))  # fmt: skip
    return "camp-1"


def test_campaign_selection_becomes_targets_with_the_latency_constraint_as_budget(
    tmp_path: Path, db_url: str
) -> None:
    with Store(db_url) as store:
        selection = {
            "pi-1": {"candidate": "prune50", "reason": "fastest"},
            "pi-2": {"candidate": None, "reason": "no candidate meets latency_p90_ms<=20"},
        }
        campaign = _campaign(store, tmp_path, selection=selection)
        targets = targets_from_campaign(store, campaign, devices=["pi-1"])
        assert len(targets) == 1
        target = targets[0]
        assert target.device_id == "pi-1" and target.label == "prune50"
        assert target.artifact == tmp_path / "cand.tflite"
        assert target.eval_path == tmp_path / "eval.npz"
        assert target.latency_budget_ms == 20.0
        assert (
            targets_from_campaign(store, campaign, devices=["pi-1"], latency_budget_ms=5.0)[
                0
            ].latency_budget_ms
            == 5.0
        )
        with pytest.raises(DeployError, match="no candidate met the constraints on pi-2"):
            targets_from_campaign(store, campaign)
        with pytest.raises(DeployError, match="no selection in this campaign"):
            targets_from_campaign(store, campaign, devices=["pi-9"])
        with pytest.raises(DeployError, match="no campaign 'nope'"):
            targets_from_campaign(store, "nope")


def test_campaign_without_a_selection_yet_says_to_finish_it_first(
    tmp_path: Path, db_url: str
) -> None:
    with Store(db_url) as store:
        campaign = _campaign(store, tmp_path, selection=None)
        with pytest.raises(DeployError, match="--resume camp-1"):
            targets_from_campaign(store, campaign)


def test_a_device_whose_deploy_cannot_be_sent_fails_alone_and_the_wave_is_still_collected(
    tmp_path: Path, db_url: str
) -> None:
    from host.deploy import Deployer, DeployTarget
    from host.fleet import Fleet
    from shared.manifest import ArtifactManifest

    manifest = ArtifactManifest(sha256="ab" * 32, size_bytes=10, format="tflite", precision="fp32")
    # Never connected: every device reads as offline.
    fleet = Fleet("mqtt://127.0.0.1:1", store=db_url)
    deployer = Deployer(fleet, device_timeout_s=0.05)
    targets = [
        DeployTarget("pi-1", tmp_path / "model.tflite", manifest=manifest),
        DeployTarget("pi-2", tmp_path / "missing.tflite"),
    ]
    result = deployer.rollout(targets, "100%", max_failures=5)
    outcomes = {o.device_id: o for o in result.outcomes}
    assert outcomes["pi-1"].outcome == "offline"
    assert outcomes["pi-2"].outcome == "failed" and outcomes["pi-2"].error_code == "not_sent"
    assert "missing.tflite" in outcomes["pi-2"].detail
    # The offline device's deploy is kept as desired state for when it comes back.
    [kept] = deployer.dstore.targets(result.rollout_id, device_id="pi-1")
    assert kept.state == "pending" and kept.sequence is None
