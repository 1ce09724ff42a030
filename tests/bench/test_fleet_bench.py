"""The fleet bench drives simulated boards with each driver and checks every result is stored once."""

from __future__ import annotations

import json
from pathlib import Path

from bench.fleet import main


def test_the_fleet_bench_runs_every_driver_and_stores_each_result_once(
    tmp_path: Path, shared_broker_url: str
) -> None:
    out = tmp_path / "fleet.json"
    main(["--boards", "20", "--runs", "1", "--broker", shared_broker_url, "--out", str(out)])
    report = json.loads(out.read_text())
    assert [r["driver"] for r in report["rows"]] == ["reference", "edgetailor", "service"]
    for row in report["rows"]:
        assert row["results"] == 20
        assert row["wall_s"] > 0 and row["cpu_s"] > 0 and row["peak_rss_mb"] > 0
    for row in report["rows"][1:]:
        assert row["stored"] == 20 and row["stored_once"]
    sims = report["samples"]["edgetailor"][0]["board_stats"]
    assert sims["commands"] == 20 and sims["hash_failures"] == 0
    assert {v["driver"] for v in report["verdicts"]} == {"reference", "edgetailor", "service"}
