"""bench.search's goals from a report: a win needs 1.25x the speed or a point of metric on every
device, a loss anywhere fails the architecture count, and board measurements are a share of the
exhaustive campaign's."""

from __future__ import annotations

from typing import Any

from bench.search import _compare, goal_rows
from host.select import select


def _device(better: bool, worse: bool, speedup: float | None) -> dict[str, Any]:
    return {"better": better, "worse": worse, "speedup": speedup, "verdict": "v",
            "named_choice": "int8", "search_measurements": 4, "campaign_measurements": 13}  # fmt: skip


def _report(devices: list[tuple[dict[str, Any], dict[str, Any]]]) -> dict[str, Any]:
    archs = [
        {"arch": f"a{i}", "devices": {"fast": f, "slow": s}, "search_measurements": 8,
         "campaign_measurements": 26}
        for i, (f, s) in enumerate(devices)
    ]  # fmt: skip
    predictor = {"kfold": {"classes": {}}, "leave_one_arch_out": {"per_device": {}}}
    return {"archs": archs, "predictor": predictor}


def test_two_of_three_winning_architectures_and_no_loss_meet_the_goal() -> None:
    win, tie = _device(True, False, 1.5), _device(False, False, 1.1)
    rows = goal_rows(_report([(win, win), (win, win), (win, tie)]))
    overall = next(r for r in rows if r.measure.startswith("architectures"))
    assert overall.met and overall.measured == "2 of 3"
    shares = [r for r in rows if r.measure.endswith("board measurements")]
    assert all(r.met and abs(r.ratio - 8 / 26) < 1e-9 for r in shares)


def test_a_loss_on_any_device_fails_the_architecture_goal() -> None:
    win, loss = _device(True, False, 1.5), _device(False, True, 0.8)
    rows = goal_rows(_report([(win, win), (win, win), (win, loss)]))
    assert not next(r for r in rows if r.measure.startswith("architectures")).met


def test_a_search_choice_is_compared_with_the_best_named_recipe_under_the_same_constraints() -> (
    None
):
    from host.select import ResultRow

    def row(name: str, p90: float, acc: float) -> ResultRow:
        return ResultRow(candidate=name, device="fast", recipe=name, format="tflite",
                         precision="int8", size_bytes=1, latency_ms={"p90": p90}, peak_rss_mb=1.0,
                         metric="accuracy", metric_value=acc, baseline_metric=0.9)  # fmt: skip

    named = select(
        [row("int8", 1.0, 0.89), row("baseline", 3.0, 0.9)], ["metric_drop<=0.02"], "min_latency"
    )["fast"]
    mine = {
        "candidate": {"candidate": "t", "latency_ms": {"p90": 0.5}, "metric_value": 0.885},
        "reason": "r",
    }
    doc = {"board_measurements": 3, "decisions": {}, "measured_vs_predicted": []}
    compared = _compare("fast", mine, named, doc, 13)
    assert compared["named_choice"] == "int8" and compared["speedup"] == 2.0
    assert compared["better"] and not compared["worse"]


def test_the_slow_boards_budget_leaves_out_every_named_recipe_within_the_metric_bound() -> None:
    from bench.search import FAST, SLOW, latency_budgets
    from host.select import ResultRow

    def row(name: str, device: str, p90: float, acc: float) -> ResultRow:
        return ResultRow(candidate=name, device=device, recipe=name, format="tflite",
                         precision="int8", size_bytes=1, latency_ms={"p90": p90}, peak_rss_mb=1.0,
                         metric="accuracy", metric_value=acc, baseline_metric=0.9)  # fmt: skip

    rows = [
        row("baseline", FAST, 2.0, 0.9), row("baseline", SLOW, 4.0, 0.9),
        row("int8", SLOW, 1.6, 0.89), row("prune50", SLOW, 1.2, 0.80),  # too lossy to count
        row("int8", FAST, 0.8, 0.89),
    ]  # fmt: skip
    budgets = latency_budgets(rows, {FAST: 2.0, SLOW: 4.0}, 0.02, 0.5, 0.9)
    assert budgets == {FAST: 1.0, SLOW: 1.44}  # 0.9 x int8's 1.6 ms, below half of 4 ms
    assert latency_budgets(rows, {FAST: 2.0, SLOW: 4.0}, 0.02, 0.5, 0.0)[SLOW] == 2.0
