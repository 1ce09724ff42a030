"""`make bench` runs each benchmark in its own process and prints one table of goals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import bench.__main__ as runner
from bench.goals import GoalRow
from bench.transfer import goal_rows as transfer_rows


def test_the_runner_tabulates_each_goal_and_reports_a_failed_benchmark_without_stopping(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(
        runner,
        "BENCHES",
        (runner.Bench("no_such_benchmark", ()), runner.Bench("footprint", ())),
    )
    code = runner.main(["--out-dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["failed"]) == {"no_such_benchmark"}
    [row] = summary["rows"]
    assert row["bench"] == "footprint" and row["goal"] == "<= 1.25"
    assert row["result"] == ("pass" if row["ratio"] <= 1.25 else "MISS")
    assert json.loads((tmp_path / "footprint.json").read_text())["ratio"] == row["ratio"]
    assert "FAILED" in out and "idle agent RSS" in out


def test_an_unknown_benchmark_name_is_refused_with_the_list_of_names(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exc:
        runner.main(["--only", "nope"])
    assert exc.value.code == 2
    assert "unknown benchmark(s): nope" in capsys.readouterr().err


def test_the_transfer_goals_read_the_report_the_transfer_bench_wrote() -> None:
    report = json.loads(Path("bench/results/transfer.json").read_text())
    rows = transfer_rows(report)
    assert rows and all(isinstance(r, GoalRow) for r in rows)
    speed = [r for r in rows if r.measure.startswith("artifact transfer")]
    assert len(speed) == len(report["speed"])
    for row, raw in zip(speed, report["speed"], strict=True):
        assert row.ratio == raw["ratio"] and row.met is raw["passes"]


def test_every_benchmark_with_goals_defines_goal_rows() -> None:
    import importlib

    for bench in runner.BENCHES:
        module = importlib.import_module(f"bench.{bench.name}")
        assert callable(getattr(module, "goal_rows", None)) == bench.has_goals, bench.name
