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
