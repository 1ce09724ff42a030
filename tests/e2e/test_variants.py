"""Acceptance: a campaign that exports TFLite and ONNX and sweeps thread counts measures every
(candidate, runtime, threads) variant each board can run, picks one variant per board, and the
deploy makes the board serve the picked model with the picked runtime and thread count.

Two real agents on real Mosquitto: one with ONNX Runtime and ai-edge-litert, one in the board-like
venv with tflite-runtime only (it is never sent the ONNX files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from device_agent.serve.client import InferenceClient
from host.campaign import CampaignSpec, run_campaign
from host.deploy import Deployer, targets_from_campaign
from host.fleet import Fleet
from host.store import Store
from shared.hashing import sha256_file
from tests.agents import AgentProcess, wait_serving

pytestmark = pytest.mark.slow

BOARD_PYTHON = os.environ.get("EDGETAILOR_BOARD_PYTHON")


@pytest.mark.skipif(not BOARD_PYTHON, reason="needs EDGETAILOR_BOARD_PYTHON (the board-like venv)")
def test_campaign_with_tflite_and_onnx_and_a_thread_sweep_picks_a_variant_per_board_and_deploys_it(
    shared_broker_url: str, base_topic: str, tmp_path: Path,
) -> None:  # fmt: skip
    space = tmp_path / "space.json"
    space.write_text(json.dumps([{"name": "fp32", "steps": []}]))
    socket_path = tmp_path / "onnx.sock"
    full = AgentProcess(
        shared_broker_url, "var-full", tmp_path / "full", base_topic,
        extra_args=["--serve", f"unix:{socket_path}"],
    )  # fmt: skip
    board = AgentProcess(
        shared_broker_url, "var-board", tmp_path / "board", base_topic, python=str(BOARD_PYTHON)
    )
    spec = CampaignSpec(
        model="builtin:digits_cnn", data="builtin:digits", space=str(space),
        devices=("var-full", "var-board"), formats=("tflite", "onnx"), threads=(1, 2),
        objective="min_latency", pretrain_epochs=2, runs=10, min_s=0.2, warmup_s=0.1,
        job_timeout_s=120.0,
    )  # fmt: skip
    with (
        full,
        board,
        Store(f"sqlite:///{tmp_path / 'host.db'}") as store,
        Fleet(shared_broker_url, base_topic, store=store) as fleet,
    ):
        full.wait_online(timeout=60)
        board.wait_online(timeout=60)
        for device in ("var-full", "var-board"):
            fleet.wait_for_device(device, timeout=30)
        outcome = run_campaign(spec, store, fleet, campaign_id="variants", work_dir=tmp_path / "w")

        rows = {(r["device"], r["candidate"]): r for r in outcome["results"]}
        full_variants = {c for d, c in rows if d == "var-full"}
        board_variants = {c for d, c in rows if d == "var-board"}
        assert full_variants == {
            "fp32@tflite@t1", "fp32@tflite@t2", "fp32@onnx@t1", "fp32@onnx@t2"
        }  # fmt: skip
        assert board_variants == {"fp32@tflite@t1", "fp32@tflite@t2"}  # no ONNX Runtime there
        for (_device, variant), row in rows.items():
            assert row["status"] == "ok", row
            assert row["runtime"] == variant.split("@")[1]
            assert row["threads"] == int(variant.rsplit("@t", 1)[1])
            assert row["artifact"] == variant.rsplit("@t", 1)[0]
            assert row["latency_ms"]["p50"] > 0

        # Selection weighs variants: each board's pick is one of its own measured variants.
        picks = outcome["selection"]
        for device, measured in (("var-full", full_variants), ("var-board", board_variants)):
            assert picks[device]["candidate"] in measured
            assert picks[device]["threads"] in (1, 2)
        assert picks["var-board"]["runtime"] == "tflite"

        # The deploy carries each board's picked runtime and threads.
        targets = targets_from_campaign(store, "variants")
        by_device = {t.device_id: t for t in targets}
        assert by_device["var-full"].threads == picks["var-full"]["threads"]
        assert by_device["var-full"].runtime == picks["var-full"]["runtime"]
        deployer = Deployer(fleet, health_runs=3, timeout_s=60.0)
        report = deployer.rollout(targets, waves="100%")
        assert report.ok and [o.outcome for o in report.outcomes] == ["committed"] * 2, report

        chosen = by_device["var-full"]
        sha = sha256_file(chosen.artifact)
        release = json.loads((full.data_dir / "releases" / sha / "release.json").read_text())
        assert release == {"runtime": chosen.runtime, "threads": chosen.threads}
        served = wait_serving(InferenceClient(f"unix:{socket_path}"), sha)
        assert served["threads"] == chosen.threads
        board_pick = by_device["var-board"]
        board_release = board.data_dir / "releases" / sha256_file(board_pick.artifact)
        assert json.loads((board_release / "release.json").read_text()) == {
            "runtime": "tflite", "threads": board_pick.threads,
        }  # fmt: skip
