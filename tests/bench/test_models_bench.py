"""bench.models: a real agent scores each file with the host's metric for the model's task."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.models import markdown, run_bench

pytest.importorskip("transformers")


def test_the_agent_scores_the_encoder_by_cosine_and_agrees_with_the_host_on_the_fp32_file(
    tmp_path: Path,
) -> None:
    out = tmp_path / "models.json"
    report = run_bench(
        out, quick=True, models=["bert"], recipe_names=["baseline"], runs=5, int8_report=False,
        log=lambda _: None,
    )  # fmt: skip
    assert json.loads(out.read_text())["archs"][0]["task"] == "embedding"
    (row,) = report["archs"][0]["rows"]
    assert row["host_metric_name"] == row["board"]["metric"] == "cosine"
    assert row["board"]["task"] == "embedding"
    assert row["board"]["metric_value"] == pytest.approx(row["host_metric"], abs=1e-3)
    low, high = row["host_interval"]
    assert low <= row["host_metric"] <= high
    assert "| bert | baseline | fp32 |" in markdown(report)


def test_merging_a_rerun_replaces_the_rows_it_reran_and_keeps_the_others() -> None:
    from bench.models import merge_reports

    def row(recipe: str, metric: float) -> dict[str, object]:
        return {"recipe": recipe, "host_metric": metric}

    first = {
        "command": "first",
        "seconds": 10,
        "archs": [
            {"arch": "vit", "rows": [row("baseline", 0.9), row("int8", 0.9), row("prune", 0.8)]}
        ],
    }
    rerun = {
        "command": "rerun",
        "seconds": 5,
        "archs": [
            {"arch": "vit", "rows": [row("baseline", 0.9), row("prune", 0.89)]},
            {"arch": "bert", "rows": [row("baseline", 1.0)]},
        ],
    }
    merged = merge_reports([first, rerun])
    vit, bert = merged["archs"]
    assert [(r["recipe"], r["host_metric"]) for r in vit["rows"]] == [
        ("baseline", 0.9), ("int8", 0.9), ("prune", 0.89),
    ]  # fmt: skip
    assert vit["rows"][2]["run"] == "rerun" and "run" not in vit["rows"][1]
    assert bert["arch"] == "bert" and merged["seconds"] == 15
    assert merged["command"] == "first; rerun"
    assert [r["recipe"] for r in first["archs"][0]["rows"]] == ["baseline", "int8", "prune"]


def test_the_agent_scores_every_file_of_the_new_model_classes_as_the_host_does(
    tmp_path: Path,
) -> None:
    """A recurrent classifier, a two-output net and a regressor with real labels, each exported in
    fp32 and full int8: the agent's metric on every file equals the host's, and every row of the
    saved JSON parses back with its goal."""
    out = tmp_path / "models.json"
    report = run_bench(
        out, quick=True, models=["gru", "two_outputs", "mlp_regressor"],
        recipe_names=["baseline", "int8"], runs=5, int8_report=False, log=lambda _: None,
    )  # fmt: skip
    saved = json.loads(out.read_text())
    assert [a["arch"] for a in saved["archs"]] == ["gru", "two_outputs", "mlp_regressor"]
    expected = {"gru": "accuracy", "two_outputs": "accuracy", "mlp_regressor": "r2"}
    for arch in saved["archs"]:
        assert [r["recipe"] for r in arch["rows"]] == ["baseline", "int8"]
        for row in arch["rows"]:
            assert "error" not in row, row.get("error")
            assert row["host_metric_name"] == row["board"]["metric"] == expected[arch["arch"]]
            assert row["board"]["metric_value"] == pytest.approx(row["host_metric"], abs=1e-3)
        assert arch["rows"][1]["precision"] == "int8" and arch["rows"][1]["goal"]
    assert saved["archs"][2]["rows"][1]["goal"] == "within 0.01 r2"
    assert "| mlp_regressor | int8 | int8 |" in markdown(report)


def test_a_distilled_student_no_better_than_the_pruned_fine_tune_is_marked_so() -> None:
    from bench.models import finish_rows

    def row(recipe: str, metric: float, params: int) -> dict[str, object]:
        return {"recipe": recipe, "host_metric": metric, "params": params, "size_bytes": 4 * params,
                "macs": params, "precision": "fp32", "sparsity": 0.0, "board": {}}  # fmt: skip

    rows = [
        row("baseline", 0.95, 1000),
        row("prune50_ft", 0.93, 400),
        row("distill_half", 0.93, 400),
    ]
    finish_rows(rows, "classification")
    assert rows[2]["no_better_than_pruned"] and rows[2]["vs_pruned"] == pytest.approx(0.0)
    report = {"archs": [{"arch": "gru", "rows": rows}]}
    for arch in report["archs"]:
        for r in arch["rows"]:
            r["host_interval"] = (0.9, 0.96)
            r["host_metric_name"] = "accuracy"
    assert "no better than prune50_ft (+0.000)" in markdown(report)
    rows[2]["host_metric"] = 0.94
    finish_rows(rows, "classification")
    assert not rows[2]["no_better_than_pruned"] and "+0.010 vs prune50_ft" in markdown(report)
