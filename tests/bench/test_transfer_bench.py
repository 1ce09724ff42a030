"""The transfer bench measures both sides in one run and writes every raw sample."""

from __future__ import annotations

import json
from pathlib import Path

from bench.transfer import render, run_bench


def test_the_transfer_bench_compares_both_sides_of_one_run_and_counts_real_egress(
    tmp_path: Path,
) -> None:
    out = tmp_path / "transfer.json"
    report = run_bench(
        out,
        sizes_mb=[1.0],
        runs=1,
        boards=[3],
        fanout_mb=1.0,
        spreads_s=[0.0],
        brokers=["mosquitto"],
        chunk_size=128 * 1024,
        deploy_boards=0,
        round_trips=3,
    )
    assert json.loads(out.read_text()) == report
    (speed,) = report["speed"]
    sample = speed["samples"][0]
    assert sample["raw"]["complete"] and sample["edgetailor"]["all_verified"]
    assert speed["ratio"] == sample["edgetailor"]["mb_s"] / sample["raw"]["mb_s"]
    (row,) = report["egress"]
    assert row["all_verified"] and row["boards"] == 3 and not row["errors"]
    # Every byte leaves the host at least once, and the proxy counted the real bytes.
    assert row["chunks_published"] >= row["chunks"]
    assert row["host_egress_bytes"] >= row["bytes"]
    assert [p["path"] for p in report["paths"]] == ["deploy --model", "service", "campaign"]
    for path in report["paths"]:
        assert path["boards"] == 3 and path["done"] == 3
        assert path["chunks_published"] >= path["chunks"]
        assert path["host_egress_bytes"] >= path["bytes"]
    trip = report["round_trip"]["mosquitto"]
    assert trip["paho_defaults"]["samples"] == trip["tcp_nodelay"]["samples"] == 3
    assert report["round_trip"]["mosquitto_set_tcp_nodelay"]["tcp_nodelay"]["samples"] == 3
    assert render(report).row_count == 2 + 1 + 1 + 3
