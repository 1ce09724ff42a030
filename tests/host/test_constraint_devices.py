"""Constraints with an ``@device`` suffix: parsed, printed, applied to that device only, refused
when malformed, and read per device by a deployment's latency budget."""

from __future__ import annotations

import pytest

from host.deploy.targets import targets_from_selection
from host.search.spec import SearchSpec
from host.select import Constraint, ResultRow, select
from shared.errors import ConfigError


def _row(candidate: str, device: str, p90: float, accuracy: float) -> ResultRow:
    return ResultRow(
        candidate=candidate, device=device, recipe=candidate, format="tflite", precision="fp32",
        size_bytes=1000, latency_ms={"p90": p90, "p50": p90}, peak_rss_mb=50.0, metric="accuracy",
        metric_value=accuracy, baseline_metric=0.98,
    )  # fmt: skip


def test_a_device_suffix_is_parsed_and_printed_back() -> None:
    constraint = Constraint.parse("latency_p90_ms<=5@pi-01")
    assert (constraint.name, constraint.op, constraint.bound, constraint.device) == (
        "latency_p90_ms", "<=", 5.0, "pi-01",
    )  # fmt: skip
    assert str(constraint) == "latency_p90_ms<=5@pi-01"
    assert Constraint.parse(str(constraint)) == constraint
    assert Constraint.parse(" accuracy_drop <= 0.02 ").device is None
    assert constraint.applies_to("pi-01") and not constraint.applies_to("pi-02")
    assert constraint.to_dict()["device"] == "pi-01"


@pytest.mark.parametrize(
    "text", ["latency_p90_ms<=5@", "latency_p90_ms<=5@pi 01", "latency_p90_ms<=5@a@b", "@pi-01"]
)
def test_a_malformed_device_suffix_is_refused_with_the_grammar(text: str) -> None:
    with pytest.raises(ConfigError, match="DEVICE|device"):
        Constraint.parse(text)


def test_a_device_constraint_binds_only_its_device_in_selection() -> None:
    rows = [
        _row("fast", "pi-01", 4.0, 0.90),
        _row("accurate", "pi-01", 9.0, 0.97),
        _row("fast", "pi-02", 4.0, 0.90),
        _row("accurate", "pi-02", 9.0, 0.97),
    ]
    chosen = select(rows, ["latency_p90_ms<=5@pi-01"], "max_metric")
    assert chosen["pi-01"].chosen_id == "fast"
    assert chosen["pi-02"].chosen_id == "accurate"
    assert chosen["pi-01"].constraints[0].device == "pi-01"
    assert chosen["pi-02"].constraints == []


def test_a_search_refuses_a_constraint_on_a_device_it_does_not_search() -> None:
    with pytest.raises(ConfigError, match="pi-09"):
        SearchSpec(model="builtin:mlp", data="builtin:digits", devices=("pi-01",),
                   constraints=("latency_p90_ms<=5@pi-09",))  # fmt: skip
    spec = SearchSpec(model="builtin:mlp", data="builtin:digits", devices=("pi-01", "pi-02"),
                      constraints=("accuracy_drop<=0.02", "latency_p90_ms<=5@pi-01"))  # fmt: skip
    assert spec.constraints_for("pi-02") == ["accuracy_drop<=0.02"]
    assert spec.constraints_for("pi-01") == ["accuracy_drop<=0.02", "latency_p90_ms<=5@pi-01"]


def test_a_deployment_takes_each_device_its_own_latency_budget(tmp_path) -> None:
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    selection = {d: {"candidate": "c", "reason": "r"} for d in ("pi-01", "pi-02", "pi-03")}
    targets = targets_from_selection(
        selection, [{"id": "c", "path": str(model)}],
        constraints=["latency_p90_ms<=20", "latency_p90_ms<=5@pi-01", "latency_p90_ms<=50@pi-03"],
    )  # fmt: skip
    budgets = {t.device_id: t.latency_budget_ms for t in targets}
    assert budgets == {"pi-01": 5.0, "pi-02": 20.0, "pi-03": 20.0}
