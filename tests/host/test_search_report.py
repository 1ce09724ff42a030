"""The search's report from stored rows: per device the choice among measured results only, measured
against predicted with its error, every trial with its decision, the layer sensitivity, and the
named recipes of a campaign beside; user-supplied names are escaped."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec

from host.campaign.quality import Judgement
from host.search import search_outcome, write_search_report
from host.search.store import SearchStore, TrialInfo, Variant
from host.select import ResultRow
from host.store import Store
from tests.host.campaign_helpers import store_benchmark

SPEC = {
    "model": "builtin:mlp", "data": "builtin:digits", "devices": ["pi-01"],
    "constraints": ["accuracy_drop<=0.05", "latency_p90_ms<=3@pi-01"], "objective": "min_latency",
    "budget": 3, "trials": 3, "sampler": "tpe",
}  # fmt: skip


def _row(candidate: str, p90: float, accuracy: float) -> ResultRow:
    return ResultRow(
        candidate=candidate, device="pi-01", recipe=candidate, format="tflite", precision="int8",
        size_bytes=100, latency_ms={"p90": p90, "p50": p90}, peak_rss_mb=40.0, metric="accuracy",
        metric_value=accuracy, baseline_metric=0.97, metric_interval=(accuracy - 0.01, accuracy + 0.01),
        drop_interval=(0.97 - accuracy - 0.01, 0.97 - accuracy + 0.01), threads=1, runtime="tflite",
    )  # fmt: skip


def _trial(number: int, variant: str, decision: str, predicted: float, reason: str) -> TrialInfo:
    return TrialInfo(
        search_id="s", device_id="pi-01", trial_number=number, params={"precision": "int8"},
        variant=variant, recipe=[{"technique": "int8", "version": 1}], sha256=None,
        host={"metric_value": 0.95}, decision=decision, reason=reason, worker="w",
        prediction={"known": True, "latency_p90_ms": predicted, "latency_interval": [predicted * 0.8, predicted * 1.2]},
        created=time.time(),
    )  # fmt: skip


def test_the_report_chooses_among_measured_results_and_shows_predictions_beside(
    tmp_path: Path,
) -> None:
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as store:
        sstore = SearchStore(store)
        sstore.create_search("s", SPEC)
        sstore.update_search("s", state={"sensitivity": [{
            "group": {"name": "g0:body.1", "modules": ["body.1"], "params": 100},
            "prune_drop": 0.2, "int8_drop": 0.001, "note": "",
        }]})  # fmt: skip
        for number, (variant, p90, accuracy) in enumerate((("a", 2.0, 0.95), ("b", 2.5, 0.96))):
            row = _row(f"<b>{variant}</b>", p90, accuracy)
            what = Variant(row.candidate, row.recipe, row.format, row.precision)
            assert sstore.claim("s", "pi-01", variant, "w", number, 60, what).mine
            # As a search stores it: the agent's result with its command, the judgement here.
            job = store_benchmark(store, row, f"{number:064x}")
            sstore.measurement_sent("s", "pi-01", variant, "w", job)
            judgement = Judgement(baseline_metric=0.97, drop_interval=list(row.drop_interval))
            sstore.measurement_done(
                "s", "pi-01", variant, "w", judgement=msgspec.json.encode(judgement).decode()
            )
            sstore.put_trial(_trial(number, variant, "measured", p90 * 1.1, "predicted feasible"))
        # Predicted far faster than anything measured, but never measured: never the choice.
        sstore.put_trial(_trial(2, "c", "skipped", 0.5, "budget: kept for the final check"))
        outcome = search_outcome(store, "s")
        device = outcome["devices"]["pi-01"]
        assert device["selection"]["chosen"] == "<b>a</b>"
        assert device["decisions"] == {"measured": 2, "skipped": 1}
        pairs = {p["trial"]: p for p in device["measured_vs_predicted"]}
        assert abs(pairs[0]["rel_error"] - 0.1) < 1e-9
        page = write_search_report(store, "s", tmp_path / "report").read_text()
    assert "&lt;b&gt;a&lt;/b&gt;" in page and "<b>a</b>" not in page
    for text in (
        "Layer sensitivity",
        "g0:body.1",
        "Measured against predicted",
        "budget: kept for the final check",
        "latency_p90_ms&lt;=3@pi-01",
    ):
        assert text in page, text
    assert (tmp_path / "report" / "search.json").is_file()
