"""Campaigns in-process: search spaces from files, host-side screening, and a real campaign against
one real agent (real Mosquitto, real TFLite runtime) while a second target device stays offline."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from host.campaign import CampaignSpec, resolve_space, run_campaign, screen_candidates
from host.campaign.spec import parse_threads
from host.errors import ConfigError
from host.store.campaigns import CandidateInfo
from tests.agents import AgentProcess

TWO_RECIPES = [
    {"name": "fp32", "steps": []},
    {"name": "int8dyn", "steps": [{"technique": "int8_dynamic"}]},
]


def _candidate(
    cid: str, size: int, metric: float, macs: int = 1000, fmt: str = "tflite"
) -> CandidateInfo:
    return CandidateInfo(
        campaign_id="c1",
        candidate_id=cid,
        position=0,
        recipe_name=cid,
        recipe=[],
        format=fmt,
        precision="fp32",
        status="ok",
        reason=None,
        sha256=None,
        path=None,
        size_bytes=size,
        host_metrics={"host_metric": "accuracy", "host_metric_value": metric, "macs": macs},
        created=0.0,
    )


def test_search_space_file_lists_recipes_or_stages_and_rejects_duplicates(tmp_path: Path) -> None:
    listed = tmp_path / "listed.json"
    listed.write_text(json.dumps({"recipes": TWO_RECIPES}))
    assert [r.name for r in resolve_space(str(listed))] == ["fp32", "int8dyn"]

    staged = tmp_path / "staged.json"
    staged.write_text(
        json.dumps(
            {
                "stages": [
                    [
                        {"label": "dense"},
                        {
                            "label": "prune",
                            "steps": [{"technique": "prune_channels", "ratio": 0.5}],
                        },
                    ],
                    [{"label": "fp32"}, {"label": "int8", "steps": [{"technique": "int8"}]}],
                ]
            }
        )
    )
    names = [r.name for r in resolve_space(str(staged))]
    assert names == ["baseline", "int8", "prune", "prune+int8"]

    duplicated = tmp_path / "dup.json"
    duplicated.write_text(json.dumps([TWO_RECIPES[0], TWO_RECIPES[0]]))
    with pytest.raises(ConfigError, match="unique"):
        resolve_space(str(duplicated))
    with pytest.raises(ConfigError, match="neither a known name"):
        resolve_space(str(tmp_path / "missing.json"))


def test_named_demo_space_has_all_four_technique_families() -> None:
    techniques = {step.name for recipe in resolve_space("demo") for step in recipe.steps}
    assert {"prune_channels", "distill", "lowrank", "int8"} <= techniques
    assert any(
        len({s.name for s in r.steps} & {"prune_channels", "int8"}) == 2
        for r in resolve_space("demo")
    )


def test_candidate_dominated_on_host_by_more_than_the_margin_is_screened_out() -> None:
    big_bad = _candidate("big_bad", size=1000, metric=0.80)
    small_good = _candidate("small_good", size=500, metric=0.95)
    small_close = _candidate("small_close", size=400, metric=0.94)  # within margin of small_good
    onnx_twin = _candidate("onnx_bad", size=2000, metric=0.5, fmt="onnx")  # other format: kept
    dropped = screen_candidates([big_bad, small_good, small_close, onnx_twin], margin=0.02)
    assert set(dropped) == {"big_bad"}
    assert "small_good" in dropped["big_bad"] or "small_close" in dropped["big_bad"]


def test_campaign_spec_rejects_a_bad_constraint_and_empty_devices() -> None:
    with pytest.raises(ConfigError):
        CampaignSpec(model="builtin:digits_cnn", data="builtin:digits", constraints=("latency<<3",))
    with pytest.raises(ConfigError, match="devices"):
        CampaignSpec(model="builtin:digits_cnn", data="builtin:digits", devices=())


@pytest.mark.slow
def test_campaign_with_one_device_offline_finishes_with_that_device_marked(
    shared_broker_url: str, base_topic: str, tmp_path: Path, db_url: str,
) -> None:  # fmt: skip
    from host.fleet import Fleet
    from host.store import Store

    space = tmp_path / "space.json"
    space.write_text(json.dumps(TWO_RECIPES))
    agent = AgentProcess(
        shared_broker_url,
        "bench-1",
        tmp_path / "agent",
        base_topic,
        extra_args=["--telemetry-interval", "1", "--threads", "1"],
    )
    spec = CampaignSpec(
        model="builtin:digits_cnn",
        data="builtin:digits",
        space=str(space),
        devices=("bench-1", "ghost-2"),
        constraints=("accuracy_drop<=0.05",),
        pretrain_epochs=4,
        runs=10,
        min_s=0.2,
        warmup_s=0.1,
        offline_deadline_s=4.0,
        job_timeout_s=60.0,
    )
    with (
        agent,
        Store(db_url) as store,
        Fleet(shared_broker_url, base_topic, store=store) as fleet,
    ):
        agent.wait_online(timeout=60)
        store.upsert_device("ghost-2", online=False)  # a board seen before, offline now
        outcome = run_campaign(
            spec, store, fleet, campaign_id="offline-case", work_dir=tmp_path / "work"
        )

    assert outcome["devices"]["ghost-2"]["status"] == "offline"
    assert outcome["devices"]["bench-1"]["status"] == "measured"
    assert outcome["selection"]["ghost-2"]["candidate"] is None
    ghost_rows = [r for r in outcome["results"] if r["device"] == "ghost-2"]
    assert len(ghost_rows) == 2
    assert all(r["job_status"] == "offline" and "offline" in r["error"] for r in ghost_rows)
    assert all(r["job_ids"] == [] for r in ghost_rows)  # nothing was ever sent to it

    measured = sorted(
        (r for r in outcome["results"] if r["device"] == "bench-1"), key=lambda r: r["job_ids"]
    )
    assert {r["candidate"] for r in measured} == {"fp32", "int8dyn"}
    host_metric = {c["id"]: c["host_metric_value"] for c in outcome["candidates"]}
    for row in measured:
        assert 0 < row["latency_ms"]["p50"] <= row["latency_ms"]["p90"]
        # The device scores the same file on the same eval set as the host did.
        assert row["metric"] == "accuracy"
        assert row["metric_value"] == pytest.approx(host_metric[row["candidate"]], abs=0.01)
        assert row["peak_rss_mb"] > 0
    chosen = outcome["selection"]["bench-1"]
    assert chosen["candidate"] in {"fp32", "int8dyn"}
    sizes = {c["id"]: c["size_bytes"] for c in outcome["candidates"]}
    assert sizes["int8dyn"] < sizes["fp32"]

    # The eval set goes with every job but reaches the device once: later jobs find it stored.
    eval_transfers = [
        t
        for r in measured
        for t in r["transfers"]
        if t["sha256"] not in {c["sha256"] for c in outcome["candidates"]}
    ]
    assert len(eval_transfers) == 2
    assert sum(1 for t in eval_transfers if not t["already_stored"]) == 1
    assert outcome["transfers"]["already_stored"] >= 1
    assert all(math.isfinite(r["latency_ms"]["p90"]) for r in measured)


@pytest.mark.slow
def test_campaign_with_a_user_metric_scores_the_outputs_boards_send_back_with_intervals(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    from host.campaign import write_campaign_report
    from host.fleet import Fleet
    from host.store import Store
    from host.store.campaigns import CampaignStore

    space = tmp_path / "space.json"
    space.write_text(json.dumps(TWO_RECIPES))
    agent = AgentProcess(
        shared_broker_url, "enc-1", tmp_path / "agent", base_topic,
        extra_args=["--telemetry-interval", "1", "--threads", "1"],
    )  # fmt: skip
    spec = CampaignSpec(
        model="tests.taskmodels:encoder",
        data="tests.taskmodels:sentences",
        space=str(space),
        devices=("enc-1",),
        constraints=("metric_drop<=0.5",),
        metric="tests.taskmodels:negative_distance",
        runs=5,
        min_s=0.1,
        warmup_s=0.05,
        job_timeout_s=60.0,
    )
    with (
        agent,
        Store(f"sqlite:///{tmp_path / 'host.db'}") as store,
        Fleet(shared_broker_url, base_topic, store=store, outputs_dir=tmp_path / "out") as fleet,
    ):
        agent.wait_online(timeout=60)
        outcome = run_campaign(
            spec, store, fleet, campaign_id="user-metric", work_dir=tmp_path / "w"
        )
        report = write_campaign_report(CampaignStore(store), "user-metric", tmp_path / "report")

    campaign = outcome["campaign"]
    assert campaign["task"] == "embedding" and campaign["metric"] == "negative_distance"
    assert campaign["eval_samples"] == 24 and "fewer than 100" in campaign["eval_warnings"][0]
    host = {c["id"]: c for c in outcome["candidates"]}
    rows = {r["candidate"]: r for r in outcome["results"]}
    assert set(rows) == {"fp32", "int8dyn"}
    for cid, row in rows.items():
        assert row["job_status"] == "ok", row.get("error")
        # Scored here, from the board's outputs, with the function the host scored its run with.
        assert row["metric"] == "negative_distance"
        assert row["metric_value"] == pytest.approx(host[cid]["host_metric_value"], abs=1e-3)
        assert row["device_metric"] == "cosine" and row["device_metric_value"] > 0.9
        low, high = row["metric_interval"]
        assert low <= row["metric_value"] <= high
        drop_low, drop_high = row["drop_interval"]
        assert drop_low <= campaign["baseline_metric"] - row["metric_value"] <= drop_high
    assert rows["fp32"]["metric_value"] == pytest.approx(0.0, abs=1e-3)
    assert rows["int8dyn"]["metric_value"] < rows["fp32"]["metric_value"]
    assert outcome["selection"]["enc-1"]["candidate"] in rows
    html = report.read_text()
    assert "95% interval" in html and "fewer than 100" in html


def test_campaign_threads_come_as_a_list_an_int_or_a_comma_string_and_bad_counts_are_refused() -> (
    None
):
    base = {"model": "builtin:digits_cnn", "data": "builtin:digits"}
    assert CampaignSpec(**base, threads=parse_threads("1, 2,2")).threads == (1, 2)
    assert CampaignSpec(**base, threads=(2, 1, 2)).threads == (2, 1)
    assert CampaignSpec.from_stored({**base, "threads": 4}).threads == (4,)  # specs stored before
    assert CampaignSpec.from_stored({**base, "threads": None}).threads == ()
    assert CampaignSpec.from_stored(CampaignSpec(**base, threads=(1, 3)).to_dict()).threads == (
        1,
        3,
    )
    for bad in ("0", "x", "1,300"):
        with pytest.raises(ConfigError, match="thread count"):
            parse_threads(bad)
    for bad_counts in ((0,), (300,)):
        with pytest.raises(ConfigError, match="threads"):
            CampaignSpec(**base, threads=bad_counts)


def test_a_spec_stored_by_an_earlier_version_is_the_same_campaign_when_it_means_the_same() -> None:
    spec = CampaignSpec(model="builtin:digits_cnn", data="builtin:digits")
    stored = spec.to_dict() | {"threads": None}  # as written before thread sweeps
    assert stored != spec.to_dict() and spec.same_as(stored)
    assert not spec.same_as(stored | {"threads": [2]})
    assert not spec.same_as(stored | {"runs": spec.runs + 1})
    assert not spec.same_as(stored | {"from_the_future": 1})
