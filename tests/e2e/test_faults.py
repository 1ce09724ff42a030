"""Acceptance: the broker and the agent SIGKILLed at random points lose nothing and store nothing
corrupt. The loops are bench/faults.py's; ``python -m bench.faults`` runs them 20 times each.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.faults import run_agent_kills, run_broker_kills
from tests.e2e.conftest import WideArtifacts

pytestmark = pytest.mark.slow

BROKER_KILLS = int(os.environ.get("EDGETAILOR_TEST_BROKER_KILLS", "3"))
AGENT_KILLS = int(os.environ.get("EDGETAILOR_TEST_AGENT_KILLS", "5"))


def test_a_broker_killed_at_random_points_of_transfers_never_leaves_a_job_unanswered_or_corrupt(
    wide_model: WideArtifacts, tmp_path: Path
) -> None:
    report = run_broker_kills(wide_model.tflite, BROKER_KILLS, tmp_path, seed=7)
    assert report["model_bytes"] > 4 * 1024 * 1024
    assert report["killed_mid_transfer"] >= 1, report
    # Every job ends with a result or a clear error code within its timeout; none goes unanswered.
    assert sum(report["outcomes"].values()) == BROKER_KILLS
    assert "no_answer" not in report["outcomes"], report
    assert report["invalid_stored_artifacts"] == 0


def test_an_agent_killed_at_download_verify_activate_and_report_delivers_each_result_once(
    wide_model: WideArtifacts, tmp_path: Path, shared_broker_url: str
) -> None:
    report = run_agent_kills(wide_model.tflite, AGENT_KILLS, tmp_path, shared_broker_url, seed=3)
    assert set(report["kill_points"]) == {
        "download", "verify", "report", "activate_before_switch", "activate_after_switch",
    }  # fmt: skip
    assert "no_answer" not in report["outcomes"], report
    assert report["results_delivered_once"] == AGENT_KILLS
    assert report["results_delivered_twice_or_more"] == 0
    assert report["results_stored"] == AGENT_KILLS
    points = report["kill_points"]
    checks = points["activate_before_switch"] + points["activate_after_switch"]
    assert report["active_old_or_new"] == f"{checks}/{checks}"
    assert report["invalid_stored_artifacts"] == 0
