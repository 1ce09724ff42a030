"""The compression bench produces one table with every ratio taken against its own fp32 baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.compression import render, run_bench


def test_bench_writes_a_json_table_with_ratios_against_the_baseline_of_the_same_run(
    tmp_path: Path,
) -> None:
    out = tmp_path / "compression.json"
    report = run_bench(
        out, scale=0.3, baseline_epochs=6, only=["int8", "prune50_ft"], latency_runs=20
    )
    assert json.loads(out.read_text()) == report
    rows = {row["name"]: row for row in report["rows"]}
    assert list(rows) == ["baseline", "int8", "prune50_ft"]
    assert rows["baseline"]["size_ratio"] == 1.0 and rows["baseline"]["accuracy_delta_points"] == 0
    assert rows["int8"]["size_ratio"] >= 3.0
    assert rows["int8"]["macs_ratio"] == pytest.approx(1.0)
    assert rows["prune50_ft"]["macs_ratio"] >= 1.8 and rows["prune50_ft"]["size_ratio"] >= 1.8
    for row in rows.values():
        assert row["latency_ms"] > 0 and 0 <= row["accuracy"] <= 1
    assert render(report).row_count == 3
