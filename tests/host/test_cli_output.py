"""What the CLI prints where nobody reads a terminal: the demo's tables piped keep one line per
row, whatever their width, and its last line is an address that works now (with its token) or no
address at all; `status` shows the figures a result has and no placeholder for those it lacks.
`deploy` refuses the wrong kind of file and devices never seen before it sends anything."""

from __future__ import annotations

import io
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from host.cli.campaign_cmds import _print_demo, _result_text
from host.store import Store
from tests.e2e.conftest import cli_env

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]
DEVICES = ("edge-full", "edge-1core", "edge-quarter")
CANDIDATES = ("orig", "orig+int8", "prune50+int8", "distill50+int8")


def _row(device: str, candidate: str, p90: float) -> dict[str, Any]:
    return {
        "device": device, "candidate": candidate, "precision": "int8", "runtime": "tflite 2.3.0",
        "threads": 1, "size_bytes": 123_456, "latency_ms": {"mean": p90 * 0.9, "p50": p90 * 0.8,
        "p90": p90}, "p50_ci": [p90 * 0.7, p90 * 0.85], "latency_cv": 0.031,
        "invoke_ms": {"p50": p90 * 0.75}, "peak_rss_mb": 41.5, "metric": "accuracy",
        "metric_value": 0.9611, "metric_interval": [0.94, 0.975], "eval_samples": 270,
        "job_status": "ok", "status": "ok",
    }  # fmt: skip


def _summary(served: bool) -> dict[str, Any]:
    rows = [
        _row(d, c, 0.1234 + i + 10 * j)
        for j, d in enumerate(DEVICES)
        for i, c in enumerate(CANDIDATES)
    ]
    selection = {
        d: {"candidate": "orig+int8", "latency_p90_ms": 1.1234, "metric": "accuracy",
            "metric_value": 0.9611, "metric_interval": [0.94, 0.975], "reason": "the fastest "
            "within accuracy_drop<=0.02 of the baseline (0.9630), measured 30 times on the board"}
        for d in DEVICES
    }  # fmt: skip
    candidates = [
        {"id": c, "precision": "int8", "size_bytes": 123_456, "params": 10_000, "macs": 2_000_000,
         "host_metric_value": 0.95, "status": "ok"}
        for c in CANDIDATES
    ]  # fmt: skip
    url = "http://127.0.0.1:8000/"
    return {
        "outcome": {"campaign": {"id": "c-20250101-000000-abcd"}, "candidates": candidates,
                    "results": rows, "selection": selection,
                    "devices": {d: {"status": "measured"} for d in DEVICES}},
        "profiles": [{"device": d, "label": f"1 thread, CPU 0, cgroup v2 quota 0.{i} CPU"}
                     for i, d in enumerate(DEVICES)],
        "deploy": {"lines": [f"deploy {d}: committed" for d in DEVICES]},
        "report": "/tmp/demo/report/index.html", "seconds": 200.0,
        "timings": {"candidates_s": 150.0, "measure_s": 50.0},
        "dashboard": {"served": served, "devices": list(DEVICES), "url": url,
                      "login_url": f"{url}#token=et_abc"},
    }  # fmt: skip


def test_the_demo_piped_keeps_each_table_row_on_one_line() -> None:
    out = io.StringIO()  # not a terminal
    _print_demo(_summary(served=True), out)
    lines = out.getvalue().splitlines()
    for device in DEVICES:
        for candidate in CANDIDATES:
            [line] = [x for x in lines if f" {device} " in x and f" {candidate} " in x
                      and "tflite 2.3.0" in x]  # fmt: skip
            assert "0.961" in line and "ok" in line, line  # the row's last columns, same line
    assert max(len(x) for x in lines) > 150  # wider than a terminal, and not cut


@pytest.mark.parametrize("served", [True, False])
def test_the_demos_last_line_is_an_address_that_works_or_none(served: bool) -> None:
    out = io.StringIO()
    _print_demo(_summary(served=served), out)
    last = out.getvalue().splitlines()[-1]
    if served:
        assert last.endswith("http://127.0.0.1:8000/#token=et_abc")
    else:
        assert "http" not in last and "--serve" in last


def test_status_shows_the_figures_a_result_has_and_no_placeholders() -> None:
    base = {"candidate": "orig+int8", "model_sha256": "ab" * 32, "status": "ok", "error": None}
    health = {**base, "latency_p90_ms": None, "metric": None, "metric_value": None}
    assert _result_text(health) == "orig+int8: ok"
    timed = {**base, "latency_p90_ms": 1.5, "metric": None, "metric_value": None}
    assert _result_text(timed) == "orig+int8: p90 1.500 ms"
    full = {**timed, "metric": "accuracy", "metric_value": 0.95}
    assert _result_text(full) == "orig+int8: p90 1.500 ms, accuracy 0.9500"
    failed = {**base, "status": "error", "error": "worker crashed", "candidate": None,
              "latency_p90_ms": None, "metric": None, "metric_value": None}  # fmt: skip
    assert _result_text(failed) == f"{'ab' * 6}: error worker crashed"
    for text in map(_result_text, (health, timed, full, failed)):
        assert "None" not in text and " - " not in text


def _deploy(
    tmp_path: Path, broker: str, base_topic: str, *args: str
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "deploy", "--broker", broker, "--base-topic", base_topic, "--db",
         f"sqlite:///{tmp_path / 'host.db'}", "--device-timeout", "1", *args],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip


def _error_line(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 2, done.stdout + done.stderr
    [line] = [t for t in done.stderr.splitlines() if t.startswith("error:")]
    return line


def test_deploying_an_eval_set_as_the_model_or_a_model_as_the_eval_set_is_exit_2_before_any_send(
    tmp_path: Path,
) -> None:
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 4), np.float32))
    (tmp_path / "model.tflite").write_bytes(b"\x00" * 4 + b"TFL3")
    nowhere = "mqtt://127.0.0.1:1"  # nothing listens: a check after connecting would say so
    as_model = _deploy(tmp_path, nowhere, "x", "--model", str(tmp_path / "eval.npz"),
                       "--devices", "pi-1")  # fmt: skip
    assert "eval.npz is not a model" in _error_line(as_model)
    as_eval = _deploy(tmp_path, nowhere, "x", "--model", str(tmp_path / "model.tflite"),
                      "--eval", str(tmp_path / "model.tflite"), "--devices", "pi-1")  # fmt: skip
    assert "model.tflite is not an eval set" in _error_line(as_eval)


def test_deploying_to_a_device_never_seen_is_exit_2_and_stores_no_rollout(
    tmp_path: Path, shared_broker_url: str, base_topic: str
) -> None:
    (tmp_path / "model.tflite").write_bytes(b"\x00" * 4 + b"TFL3")
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as store:
        store.upsert_device("pi-1", online=False)  # seen before: offline is not unknown
    done = _deploy(tmp_path, shared_broker_url, base_topic, "--model",
                   str(tmp_path / "model.tflite"), "--devices", "pi-1,pi-new")  # fmt: skip
    line = _error_line(done)
    assert "pi-new" in line and "never seen" in line and "--pending-ok" in line
    assert "pi-1," not in line.split("known")[0]
    with sqlite3.connect(tmp_path / "host.db") as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rollouts = (
            db.execute("SELECT count(*) FROM rollouts").fetchone()[0] if "rollouts" in tables else 0
        )
    assert rollouts == 0
