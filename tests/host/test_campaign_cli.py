"""`edgetailor campaign` as a user runs it, up to the boards: the task flag, and a failed start.

The target board never comes online (a one-second offline deadline), so these runs end after the
candidates are built and scored on the host; tests/e2e has campaigns measured on real agents.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from host.store import Store
from tests.e2e.conftest import cli_env

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]
SPACE = [{"name": "fp32", "steps": []}]


def _campaign(
    tmp_path: Path, broker: str, base_topic: str, *args: str, seen: tuple[str, ...] = ("board",)
) -> subprocess.CompletedProcess:
    """`edgetailor campaign` on the devices ``seen`` before (in the database, offline now)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    space = tmp_path / "space.json"
    space.write_text(json.dumps(SPACE))
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as store:
        for device in seen:
            store.upsert_device(device, online=False)
    return subprocess.run(
        [*CLI, "campaign", "--space", str(space), "--devices", "board",
         "--offline-deadline", "1", "--broker", broker, "--base-topic", base_topic,
         "--db", f"sqlite:///{tmp_path / 'host.db'}", "--json", *args],
        capture_output=True, text=True, timeout=300, env=cli_env(),
    )  # fmt: skip


def _stored_campaigns(db: Path) -> list[str]:
    with sqlite3.connect(db) as conn:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "campaigns" not in tables:
            return []
        return [r[0] for r in conn.execute("SELECT campaign_id FROM campaigns")]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (("--devices", "never-seen-7"), "never-seen-7"),
        (("--space", "no_such_space"), "no_such_space"),
        (("--space", "/nowhere/space.json"), "/nowhere/space.json"),
        (("--constraint", "speed<=3"), "speed"),
        (("--objective", "fastest"), "fastest"),
        (("--metric", "tests.taskmodels:no_such_metric"), "no_such_metric"),
        (("--metric", "no_such_package.metrics:score"), "no_such_package"),
    ],
)
def test_a_campaign_that_names_what_is_not_there_exits_2_before_any_work_and_leaves_nothing(
    args: tuple[str, ...], named: str, shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    done = _campaign(
        tmp_path, shared_broker_url, base_topic, "--model", "builtin:digits_cnn", "--data",
        "builtin:digits", "--campaign-id", "refused", "--work-dir", str(work), *args,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    [line] = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert named in line
    assert "loading" not in done.stderr  # no model or data was loaded
    assert _stored_campaigns(tmp_path / "host.db") == [] and not work.exists()


def test_campaign_states_a_guessed_task_with_how_to_override_it_and_task_overrides_it(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    model = ["--model", "tests.taskmodels:unnamed_encoder", "--data", "tests.taskmodels:sentences"]
    guessed = _campaign(
        tmp_path / "guess", shared_broker_url, base_topic, *model, "--work-dir",
        str(tmp_path / "guess" / "w"),
    )  # fmt: skip
    assert guessed.returncode == 0, guessed.stderr[-2000:]
    campaign = json.loads(guessed.stdout)["campaign"]
    assert campaign["task"] == "embedding"
    assert "unit length" in guessed.stderr and "--task" in guessed.stderr
    [candidate] = json.loads(guessed.stdout)["candidates"]
    assert candidate["host_metric"] == "cosine"

    forced = _campaign(
        tmp_path / "forced", shared_broker_url, base_topic, *model, "--task", "classification",
        "--work-dir", str(tmp_path / "forced" / "w"),
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]
    assert json.loads(forced.stdout)["campaign"]["task"] == "classification"
    assert "guessed" not in forced.stderr
    [candidate] = json.loads(forced.stdout)["candidates"]
    assert candidate["host_metric"] == "agreement"


@pytest.mark.parametrize("flag", ["--task=vision", "--task="])
def test_an_unknown_task_is_one_line_exit_2(
    flag: str, shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    done = _campaign(
        tmp_path, shared_broker_url, base_topic, "--model", "tests.taskmodels:encoder",
        "--data", "tests.taskmodels:sentences", flag,
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    [line] = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert "task" in line and "classification" in line


def test_a_campaign_whose_factory_raises_is_one_line_exit_2_stored_as_failed_with_no_work_folder(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    work = tmp_path / "work"
    done = _campaign(
        tmp_path, shared_broker_url, base_topic, "--model", "tests.taskmodels:broken_factory",
        "--data", "builtin:digits", "--campaign-id", "broken", "--work-dir", str(work),
    )  # fmt: skip
    assert done.returncode == 2 and done.stdout == ""
    [line] = [text for text in done.stderr.splitlines() if text.startswith("error:")]
    assert "weights file /models/enc.bin not found" in line
    assert not work.exists()
    with sqlite3.connect(tmp_path / "host.db") as db:
        status, state = db.execute(
            "SELECT status, state FROM campaigns WHERE campaign_id = 'broken'"
        ).fetchone()
    assert status == "failed" and "enc.bin not found" in json.loads(state)["error"]
