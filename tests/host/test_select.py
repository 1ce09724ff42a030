"""Selection on hand-built result tables: constraints, objectives, ties, Pareto fronts, failures."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest

from host.select import (
    Constraint,
    Objective,
    ResultRow,
    figure_value,
    pareto_front,
    select,
)
from shared.errors import ConfigError, EdgeTailorError
from shared.results import BenchmarkResult, LatencyStats


def row(
    candidate: str,
    *,
    device: str = "pi4",
    metric_value: float = 0.90,
    p90: float = 10.0,
    rss: float = 50.0,
    size: int = 1_000_000,
    baseline: float | None = 0.95,
    metric: str = "accuracy",
    status: str = "ok",
    error: str | None = None,
) -> ResultRow:
    return ResultRow(
        candidate=candidate,
        device=device,
        recipe=f"recipe of {candidate}",
        format="tflite",
        precision="int8",
        size_bytes=size,
        latency_ms={
            "mean": p90 * 0.85,
            "p50": p90 * 0.8,
            "p90": p90,
            "p95": p90 * 1.1,
            "p99": p90 * 1.2,
            "max": p90 * 1.5,
        },
        peak_rss_mb=rss,
        metric=metric,
        metric_value=metric_value,
        baseline_metric=baseline,
        status=status,  # type: ignore[arg-type]
        error=error,
    )


def ids(rows: list[ResultRow]) -> list[str]:
    return [r.candidate for r in rows]


# ---------------------------------------------------------------- constraint parsing


@pytest.mark.parametrize(
    ("text", "name", "op", "bound"),
    [
        ("latency_p90_ms<=20", "latency_p90_ms", "<=", 20.0),
        (" latency_p99_ms < 35.5 ", "latency_p99_ms", "<", 35.5),
        ("accuracy>=0.9", "accuracy", ">=", 0.9),
        ("size_mb>.5", "size_mb", ">", 0.5),
        ("size_bytes==1e6", "size_bytes", "==", 1_000_000.0),
        ("metric_drop<=-0.01", "metric_drop", "<=", -0.01),
    ],
)
def test_constraint_text_parses_into_name_operator_and_bound(
    text: str, name: str, op: str, bound: float
) -> None:
    c = Constraint.parse(text)
    assert (c.name, c.op, c.bound) == (name, op, bound)


def test_unknown_figure_name_is_a_config_error_that_lists_the_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        Constraint.parse("latency_p42_ms<=20")
    message = str(info.value)
    assert "latency_p42_ms" in message
    for valid in ("latency_p90_ms", "peak_rss_mb", "size_mb", "accuracy_drop", "metric"):
        assert valid in message


@pytest.mark.parametrize(
    "text", ["latency_p90_ms=<20", "latency_p90_ms<=", "<=20", "latency_p90_ms<=20ms", "", "a b<=1"]
)
def test_malformed_constraint_is_a_config_error_with_an_example(text: str) -> None:
    with pytest.raises(ConfigError, match="latency_p90_ms<=20"):
        Constraint.parse(text)


def test_config_errors_belong_to_the_edgetailor_hierarchy() -> None:
    with pytest.raises(EdgeTailorError):
        select([row("a")], ["nonsense"])


def test_unknown_objective_is_a_config_error_naming_the_valid_ones() -> None:
    with pytest.raises(ConfigError, match="min_latency"):
        select([row("a")], [], objective="fastest")


# ---------------------------------------------------------------- figures


def test_figures_are_read_from_the_row_under_their_constraint_names() -> None:
    r = row("a", metric_value=0.91, p90=12.0, rss=40.0, size=3 * 1024 * 1024, baseline=0.95)
    assert figure_value(r, "latency_p90_ms") == 12.0
    assert figure_value(r, "latency_p50_ms") == pytest.approx(9.6)
    assert figure_value(r, "size_mb") == pytest.approx(3.0)
    assert figure_value(r, "size_bytes") == 3 * 1024 * 1024
    assert figure_value(r, "accuracy") == 0.91
    assert figure_value(r, "metric") == 0.91
    assert figure_value(r, "accuracy_drop") == pytest.approx(0.04)
    assert figure_value(r, "metric_drop") == pytest.approx(0.04)
    # An agreement row has no accuracy: a constraint on accuracy must not pass on agreement.
    assert figure_value(row("b", metric="agreement"), "accuracy") is None
    assert figure_value(row("c", baseline=None), "accuracy_drop") is None


# ---------------------------------------------------------------- constraints of each kind


@pytest.mark.parametrize(
    ("constraint", "expected"),
    [
        ("latency_p90_ms<=20", {"a", "b"}),
        ("latency_p90_ms<20", {"a"}),
        ("latency_p90_ms>20", {"c"}),
        ("latency_p90_ms>=20", {"b", "c"}),
        ("latency_p90_ms==20", {"b"}),
        ("peak_rss_mb<=60", {"a", "c"}),
        ("size_mb<1.5", {"b", "c"}),
        ("accuracy>=0.92", {"b", "c"}),
        ("accuracy_drop<=0.01", {"c"}),
        ("metric_drop<0.04", {"b", "c"}),
    ],
)
def test_each_constraint_kind_keeps_exactly_the_rows_that_meet_it(
    constraint: str, expected: set[str]
) -> None:
    rows = [
        row("a", metric_value=0.90, p90=10.0, rss=55.0, size=2 * 1024 * 1024),
        row("b", metric_value=0.92, p90=20.0, rss=70.0, size=1 * 1024 * 1024),
        row("c", metric_value=0.945, p90=30.0, rss=45.0, size=1 * 1024 * 1024),
    ]
    chosen = select(rows, [constraint])["pi4"]
    assert set(ids(chosen.feasible)) == expected


def test_constraints_combine_and_the_reason_names_what_excluded_the_others() -> None:
    rows = [
        row("c1", metric_value=0.94, p90=25.0),
        row("c7", metric_value=0.95, p90=23.1),
        row("c3", metric_value=0.91, p90=12.0),
        row("c4", metric_value=0.90, p90=9.0),
        row("c5", metric_value=0.80, p90=5.0),
    ]
    sel = select(rows, ["latency_p90_ms<=20", "accuracy_drop<=0.1"])["pi4"]
    assert sel.candidate is not None and sel.candidate.candidate == "c3"
    assert ids(sel.feasible) == ["c3", "c4"]
    assert "2 candidates excluded by latency_p90_ms<=20 (closest: c7 at 23.1 ms)" in sel.reason
    assert "1 candidate excluded by accuracy_drop<=0.1 (closest: c5 at 0.15)" in sel.reason
    assert sel.excluded == {"latency_p90_ms<=20": ["c1", "c7"], "accuracy_drop<=0.1": ["c5"]}


def test_without_constraints_the_most_accurate_candidate_wins() -> None:
    rows = [row("a", metric_value=0.9), row("b", metric_value=0.93), row("c", metric_value=0.92)]
    sel = select(rows)["pi4"]
    assert sel.chosen_id == "b"
    assert sel.reason.startswith("b chosen: highest accuracy (0.93) among 3 feasible candidates")


# ---------------------------------------------------------------- objectives and ties


def test_equal_metric_is_broken_by_lower_p90_then_memory_then_size() -> None:
    base = dict(metric_value=0.9)
    assert select([row("a", p90=12, **base), row("b", p90=11, **base)])["pi4"].chosen_id == "b"
    same_latency = [row("a", p90=11, rss=40, **base), row("b", p90=11, rss=45, **base)]
    assert select(same_latency)["pi4"].chosen_id == "a"
    same_memory = [
        row("a", p90=11, rss=40, size=2000, **base),
        row("b", p90=11, rss=40, size=1000, **base),
    ]
    sel = select(same_memory)["pi4"]
    assert sel.chosen_id == "b"
    assert "tied with a, broken by lower p90 latency" in sel.reason


def test_epsilon_makes_nearly_equal_metrics_a_tie_won_by_the_faster_candidate() -> None:
    rows = [row("accurate", metric_value=0.912, p90=30.0), row("fast", metric_value=0.910, p90=8.0)]
    assert select(rows)["pi4"].chosen_id == "accurate"
    sel = select(rows, objective=Objective(epsilon=0.005))["pi4"]
    assert sel.chosen_id == "fast"
    assert "tied within 0.005 with accurate" in sel.reason
    # A row outside the epsilon band never beats one inside it, however fast.
    rows.append(row("fastest", metric_value=0.85, p90=1.0))
    assert select(rows, objective=Objective(epsilon=0.005))["pi4"].chosen_id == "fast"


@pytest.mark.parametrize(
    ("objective", "expected"),
    [
        ("min_latency", "fast"),
        ("min_size", "small"),
        ("min_memory", "lean"),
        ("max_metric", "good"),
    ],
)
def test_each_objective_picks_the_row_best_on_its_figure_among_feasible_ones(
    objective: str, expected: str
) -> None:
    rows = [
        row("good", metric_value=0.95, p90=20, rss=80, size=4000),
        row("fast", metric_value=0.90, p90=5, rss=70, size=3000),
        row("small", metric_value=0.91, p90=15, rss=60, size=1000),
        row("lean", metric_value=0.92, p90=18, rss=30, size=2000),
        row("too_bad", metric_value=0.50, p90=1, rss=10, size=500),
    ]
    sel = select(rows, ["accuracy>=0.85"], objective=objective)["pi4"]
    assert sel.chosen_id == expected


def test_min_latency_breaks_equal_latency_by_higher_metric() -> None:
    rows = [row("a", metric_value=0.90, p90=5), row("b", metric_value=0.93, p90=5)]
    assert select(rows, objective="min_latency")["pi4"].chosen_id == "b"


# ---------------------------------------------------------------- infeasible devices and failures


def test_device_with_no_feasible_candidate_reports_the_closest_miss_and_by_how_much() -> None:
    rows = [
        row("far", p90=60.0, metric_value=0.95),  # 200% over the latency bound
        row("near", p90=22.0, metric_value=0.935),  # 10% over latency, 50% over the drop bound
        row("both", p90=21.0, metric_value=0.80),  # 5% over latency, 1400% over the drop bound
        row("jet_ok", device="jetson", p90=5.0, metric_value=0.95),
    ]
    result = select(rows, ["latency_p90_ms<=20", "accuracy_drop<=0.01"])
    pi = result["pi4"]
    assert pi.candidate is None and pi.feasible == []
    assert pi.closest_miss is not None and pi.closest_miss.row.candidate == "near"
    broken = {str(v.constraint): v for v in pi.closest_miss.violations}
    assert broken["latency_p90_ms<=20"].excess == pytest.approx(2.0)
    assert broken["latency_p90_ms<=20"].normalized == pytest.approx(0.1)
    assert broken["accuracy_drop<=0.01"].excess == pytest.approx(0.005)
    assert pi.reason.startswith("no candidate meets all constraints")
    assert "closest miss: near" in pi.reason and "over by 2.00 ms" in pi.reason
    assert result["jetson"].chosen_id == "jet_ok" and result["jetson"].closest_miss is None


def test_failed_rows_are_never_chosen_and_are_listed_with_their_error() -> None:
    rows = [
        row("crashed", metric_value=0.99, p90=1.0, status="failed", error="worker killed: OOM"),
        row("ok", metric_value=0.90, p90=10.0),
    ]
    sel = select(rows)["pi4"]
    assert sel.chosen_id == "ok"
    assert ids(sel.failed) == ["crashed"]
    assert "1 candidate failed: crashed (worker killed: OOM)" in sel.reason
    assert "crashed" not in ids(sel.pareto) + ids(sel.feasible)


def test_device_where_every_candidate_failed_has_no_choice_and_says_so() -> None:
    rows = [
        ResultRow.failed(candidate="a", device="pi0", error="no tflite runtime"),
        ResultRow.failed(candidate="b", device="pi0", error="timeout after 300 s"),
    ]
    sel = select(rows, ["latency_p90_ms<=20"])["pi0"]
    assert sel.candidate is None and sel.closest_miss is None
    assert "no candidate was measured successfully" in sel.reason
    assert "a (no tflite runtime)" in sel.reason and "b (timeout after 300 s)" in sel.reason


def test_devices_without_any_rows_are_reported_when_asked_for() -> None:
    result = select([row("a")], devices=["silent-board"])
    assert result["silent-board"].candidate is None
    assert result["silent-board"].reason == "no results for this device"


def test_a_row_missing_the_constrained_figure_is_excluded_not_passed() -> None:
    rows = [row("agree", metric="agreement", metric_value=0.99), row("acc", metric_value=0.9)]
    sel = select(rows, ["accuracy>=0.5"])["pi4"]
    assert ids(sel.feasible) == ["acc"]
    assert "(no accuracy measured)" in sel.reason


def test_duplicate_candidate_on_one_device_is_rejected() -> None:
    with pytest.raises(ConfigError, match="appears twice"):
        select([row("a"), row("a")])


# ---------------------------------------------------------------- Pareto front


def test_pareto_front_excludes_dominated_rows_and_orders_by_latency() -> None:
    rows = [
        row("best_acc", metric_value=0.95, p90=30, rss=60),
        row("fastest", metric_value=0.85, p90=5, rss=60),
        row("middle", metric_value=0.90, p90=15, rss=60),
        row("dominated", metric_value=0.88, p90=20, rss=60),  # middle beats it on every axis
        row("leanest", metric_value=0.80, p90=40, rss=10),  # worse on two axes, best on memory
        row("slower_twin", metric_value=0.90, p90=16, rss=60),  # same as middle but slower
    ]
    assert ids(pareto_front(rows)) == ["fastest", "middle", "best_acc", "leanest"]


def test_equal_rows_do_not_dominate_each_other_and_both_stay_on_the_front() -> None:
    rows = [
        row("twin_a", metric_value=0.9, p90=10, rss=50),
        row("twin_b", metric_value=0.9, p90=10, rss=50),
        row("worse", metric_value=0.9, p90=10, rss=51),
    ]
    assert ids(pareto_front(rows)) == ["twin_a", "twin_b"]


def test_pareto_front_covers_ok_rows_even_when_constraints_exclude_them() -> None:
    rows = [
        row("slow_good", metric_value=0.95, p90=30),
        row("fast", metric_value=0.90, p90=10),
        row("broken", metric_value=0.99, p90=1, status="failed", error="x"),
    ]
    sel = select(rows, ["latency_p90_ms<=20"])["pi4"]
    assert ids(sel.pareto) == ["fast", "slow_good"]


# ---------------------------------------------------------------- output


def test_selection_serializes_to_json_with_choice_reason_and_closest_miss() -> None:
    rows = [
        row("a", p90=25.0),
        row("b", p90=8.0, device="jetson"),
        row("c", device="jetson", status="failed", error="boom", metric_value=math.nan),
    ]
    result = select(rows, ["latency_p90_ms<=20"])
    data = json.loads(json.dumps({d: s.to_dict() for d, s in result.items()}, allow_nan=False))
    assert data["jetson"]["chosen"] == "b"
    assert data["jetson"]["failed"] == [{"candidate": "c", "error": "boom"}]
    assert data["pi4"]["chosen"] is None
    assert data["pi4"]["closest_miss"]["candidate"] == "a"
    assert data["pi4"]["closest_miss"]["violations"][0]["constraint"] == "latency_p90_ms<=20"
    assert data["pi4"]["constraints"] == ["latency_p90_ms<=20"]


def test_rows_round_trip_through_their_dict_form() -> None:
    original = row("a", baseline=None)
    failed = ResultRow.failed(candidate="f", device="pi4", error="boom")
    assert ResultRow.from_dict(original.to_dict()) == original
    back = ResultRow.from_dict(json.loads(json.dumps(failed.to_dict(), allow_nan=False)))
    assert back.status == "failed" and back.error == "boom" and math.isnan(back.metric_value)


def test_a_row_is_built_from_the_agents_benchmark_record() -> None:
    result = BenchmarkResult(
        job_id="j1",
        model_sha256="0" * 64,
        backend="tflite",
        runtime="ai_edge_litert 2.3.0",
        threads=2,
        size_bytes=123456,
        load_ms=3.0,
        warmup_runs=5,
        runs=50,
        latency_ms=LatencyStats(
            mean=4.0, std=0.5, min=3.0, p50=3.9, p90=4.8, p95=5.0, p99=6.0, max=7.0
        ),
        peak_rss_mb=41.5,
        rss_growth_mb=3.0,
        metric="accuracy",
        metric_value=0.93,
    )
    r = ResultRow.from_benchmark(
        result,
        candidate="c1",
        device="pi4",
        recipe="int8",
        format="tflite",
        precision="int8",
        baseline_metric=0.95,
    )
    assert figure_value(r, "latency_p90_ms") == 4.8
    assert figure_value(r, "accuracy_drop") == pytest.approx(0.02)
    assert r.size_bytes == 123456 and r.peak_rss_mb == 41.5


def test_an_invalid_row_status_is_rejected_with_the_allowed_values() -> None:
    with pytest.raises(ConfigError, match="'ok' or 'failed'"):
        row("a", status="crashed")


# -- constraints judged on 95% intervals ---------------------------------------------------------


def measured(
    candidate: str, accuracy: float, drop_interval: tuple[float, float], p90: float
) -> ResultRow:
    base = row(candidate, metric_value=accuracy, p90=p90, baseline=0.95)
    drop = 0.95 - accuracy
    spread = max(drop - drop_interval[0], drop_interval[1] - drop)
    return dataclasses.replace(
        base,
        metric_interval=(accuracy - spread, min(1.0, accuracy + spread)),
        drop_interval=drop_interval,
        eval_samples=270,
    )


def test_a_candidate_that_clearly_meets_the_constraint_wins_over_an_undecided_faster_one() -> None:
    rows = [
        measured("safe", 0.94, (0.0, 0.015), p90=5.0),  # drop 0.01, interval inside the bound
        measured("risky", 0.935, (0.005, 0.03), p90=2.0),  # drop 0.015, interval past 0.02
    ]
    sel = select(rows, ["accuracy_drop<=0.02"], "min_latency")["pi4"]
    assert sel.chosen_id == "safe" and sel.basis == "clear"
    assert sel.undecided == {"accuracy_drop<=0.02": ["risky"]}
    assert "1 candidate undecided on accuracy_drop<=0.02" in sel.reason
    assert "risky [0.005, 0.03]" in sel.reason
    assert "not chosen while a candidate clearly meets every constraint" in sel.reason
    # --strict: point estimates only, as before intervals.
    strict = select(rows, ["accuracy_drop<=0.02"], "min_latency", strict=True)["pi4"]
    assert strict.chosen_id == "risky" and strict.undecided == {}


def test_without_a_clear_candidate_one_meeting_the_point_estimate_is_chosen_and_said_so() -> None:
    rows = [
        measured("likely", 0.935, (0.005, 0.03), p90=3.0),  # point meets, interval straddles
        measured("doubtful", 0.92, (0.01, 0.05), p90=1.0),  # point misses, interval straddles
        measured("gone", 0.85, (0.08, 0.12), p90=0.5),  # the whole interval misses
    ]
    sel = select(rows, ["accuracy_drop<=0.02"], "min_latency")["pi4"]
    assert sel.chosen_id == "likely" and sel.basis == "point"
    assert sel.reason.startswith("no candidate clearly meets every constraint")
    assert "on the point estimate" in sel.reason
    assert sel.excluded == {"accuracy_drop<=0.02": ["gone"]}
    assert sel.undecided == {"accuracy_drop<=0.02": ["likely", "doubtful"]}


def test_when_only_undecided_misses_remain_nothing_is_chosen_and_more_samples_are_asked_for() -> (
    None
):
    rows = [measured("doubtful", 0.92, (0.01, 0.05), p90=1.0)]
    sel = select(rows, ["accuracy_drop<=0.02"], "min_latency")["pi4"]
    assert sel.candidate is None and sel.basis == "none"
    assert sel.closest_miss is not None and sel.closest_miss.row.candidate == "doubtful"
    assert "undecided on accuracy_drop<=0.02" in sel.reason
    assert "more eval samples would tell" in sel.reason


def test_intervals_round_trip_through_the_result_row_dict() -> None:
    original = measured("a", 0.94, (0.0, 0.015), p90=5.0)
    back = ResultRow.from_dict(json.loads(json.dumps(original.to_dict())))
    assert back.drop_interval == original.drop_interval
    assert back.metric_interval == pytest.approx(original.metric_interval)
    assert back.eval_samples == 270
