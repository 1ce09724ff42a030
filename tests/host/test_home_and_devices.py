"""EDGETAILOR_HOME moves every default location of the host; `devices` shows what the broker says
and marks the devices only the database knows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from host.campaign.spec import default_work_root
from host.cli.main import main as cli_main
from host.fleet import Fleet
from host.store import Store, default_db_url
from tests.agents import AgentProcess


def test_edgetailor_home_moves_the_database_campaigns_and_returned_outputs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("EDGETAILOR_HOME", str(home))
    monkeypatch.delenv("EDGETAILOR_DB", raising=False)
    assert default_db_url() == f"sqlite:///{home / 'edgetailor.db'}"
    assert default_work_root() == home / "campaigns"
    assert Fleet("mqtt://127.0.0.1:1883").outputs.directory == home / "outputs"
    with pytest.raises(SystemExit) as done:
        cli_main(["status", "--db-only", "--json"])
    assert done.value.code == 0, capfd.readouterr().err
    assert json.loads(capfd.readouterr().out) == []
    assert (home / "edgetailor.db").is_file()
    monkeypatch.setenv("EDGETAILOR_DB", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    assert default_db_url() == f"sqlite:///{tmp_path / 'elsewhere.db'}"


def test_devices_lists_the_brokers_devices_and_marks_database_only_ones(
    shared_broker_url: str,
    base_topic: str,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    db = f"sqlite:///{tmp_path / 'host.db'}"
    with Store(db) as store:
        # Seen once on another broker: the database remembers it, this broker does not know it.
        store.upsert_device("elsewhere-1", online=True, birth={"arch": "armv7l", "cores": 4})
    with AgentProcess(shared_broker_url, "here-1", tmp_path / "agent", base_topic) as agent:
        agent.wait_online(timeout=60)
        with pytest.raises(SystemExit) as done:
            cli_main([
                "devices", "--broker", shared_broker_url, "--base-topic", base_topic,
                "--db", db, "--json",
            ])  # fmt: skip
    captured = capfd.readouterr()
    assert done.value.code == 0, captured.err
    rows = {r["device_id"]: r for r in json.loads(captured.out)}
    assert rows["here-1"]["source"] == "broker" and rows["here-1"]["online"] is True
    assert rows["elsewhere-1"]["source"] == "database"
    assert rows["elsewhere-1"]["online"] is None  # unknown here, not "offline"
    assert rows["elsewhere-1"]["arch"] == "armv7l"
