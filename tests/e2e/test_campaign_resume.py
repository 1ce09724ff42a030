"""Acceptance: `edgetailor campaign` killed with SIGKILL mid-campaign and resumed does not re-run the
jobs that had finished; `report` and `status` read the stored campaign back."""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import AgentFactory, cli_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]
SPACE = [
    {"name": "fp32", "steps": []},
    {"name": "int8dyn", "steps": [{"technique": "int8_dynamic"}]},
    {"name": "int8", "steps": [{"technique": "int8"}]},
]


def _jobs(db_path: Path) -> list[dict[str, object]]:
    if not db_path.exists():
        return []
    try:
        with sqlite3.connect(db_path, timeout=5) as conn:
            rows = conn.execute(
                "SELECT candidate_id, device_id, status, job_ids FROM campaign_jobs"
            ).fetchall()
    except sqlite3.OperationalError:
        return []  # tables not created yet
    return [
        {"candidate": c, "device": d, "status": s, "job_ids": json.loads(j)} for c, d, s, j in rows
    ]


def _journaled_job_ids(agent_dir: Path) -> list[str]:
    return [json.loads(p.read_text())["job_id"] for p in (agent_dir / "journal").glob("*.json")]


def test_host_killed_mid_campaign_resumes_without_rerunning_finished_jobs(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory, tmp_path: Path,
) -> None:  # fmt: skip
    agents = {
        d: start_agent(d, shared_broker_url, extra_args=["--outbox-retry-s", "1", "--threads", "1"])
        for d in ("rig-a", "rig-b")
    }
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    db_path = tmp_path / "host.db"
    common = [
        "--broker",
        shared_broker_url,
        "--base-topic",
        base_topic,
        "--db",
        f"sqlite:///{db_path}",
    ]
    first_err = (tmp_path / "first.err").open("wb")
    first = subprocess.Popen(
        [*CLI, "campaign", "--model", "builtin:digits_cnn", "--data", "builtin:digits",
         "--space", str(space), "--devices", "rig-a,rig-b", "--campaign-id", "resume-me",
         "--pretrain-epochs", "4", "--runs", "10", "--min-s", "1.0",
         "--work-dir", str(tmp_path / "work"), "--json", *common],
        stdout=subprocess.DEVNULL, stderr=first_err, env=cli_env(),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 400
        while not any(j["status"] == "ok" for j in _jobs(db_path)):
            assert first.poll() is None, (tmp_path / "first.err").read_text()[-3000:]
            assert time.monotonic() < deadline, "no job finished in time"
            time.sleep(0.2)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        first_err.close()
    before = {(j["candidate"], j["device"]): j for j in _jobs(db_path)}
    finished_before = {k: j["job_ids"] for k, j in before.items() if j["status"] == "ok"}
    assert finished_before
    assert len(finished_before) < len(SPACE) * 2, "the host was killed too late to test a resume"

    second = subprocess.run(
        [*CLI, "campaign", "--resume", "resume-me", "--json", *common],
        capture_output=True,
        text=True,
        timeout=600,
        env=cli_env(),
    )
    assert second.returncode == 0, second.stderr[-3000:]
    outcome = json.loads(second.stdout)
    assert {d: v["status"] for d, v in outcome["devices"].items()} == {
        "rig-a": "measured",
        "rig-b": "measured",
    }
    assert len(outcome["results"]) == len(SPACE) * 2

    after = {(j["candidate"], j["device"]): j for j in _jobs(db_path)}
    for key, job_ids in finished_before.items():
        assert after[key]["job_ids"] == job_ids, f"{key} was sent again after the restart"
    # Every benchmark command the agents ever received is one the DB knows, and none twice.
    sent = [jid for j in after.values() for jid in j["job_ids"]]
    journaled = [jid for agent in agents.values() for jid in _journaled_job_ids(agent.data_dir)]
    assert sorted(journaled) == sorted(sent)
    assert len(set(sent)) == len(sent)

    report = subprocess.run(
        [
            *CLI,
            "report",
            "--campaign",
            "resume-me",
            "--out",
            str(tmp_path / "rep"),
            "--db",
            f"sqlite:///{db_path}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert report.returncode == 0, report.stderr
    html = (tmp_path / "rep" / "index.html").read_text()
    assert "<svg" in html and "rig-a" in html and "int8dyn" in html

    status = subprocess.run(
        [*CLI, "status", "--json", *common],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(),
    )
    assert status.returncode == 0, status.stderr
    fleet = {row["device_id"]: row for row in json.loads(status.stdout)}
    assert fleet["rig-a"]["online"] and fleet["rig-b"]["online"]
    assert fleet["rig-a"]["last_results"][0]["candidate"] in {"fp32", "int8dyn", "int8"}
