"""Acceptance: `edgetailor demo` runs the whole loop on embedded defaults, measures differently
constrained local agents, chooses per device under the constraint, and leaves nothing behind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from tests.e2e.conftest import cli_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


def test_demo_measures_each_profile_chooses_per_device_and_cleans_up(tmp_path: Path) -> None:
    space = tmp_path / "space.json"
    space.write_text(
        json.dumps(
            [
                {"name": "fp32", "steps": []},
                {"name": "int8", "steps": [{"technique": "int8"}]},
            ]
        )
    )
    out = tmp_path / "demo"
    done = subprocess.run(
        [
            *CLI,
            "demo",
            "--agents",
            "3",
            "--out",
            str(out),
            "--space",
            str(space),
            "--json",
            "--model",
            "builtin:digits_cnn",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=cli_env(),
    )
    assert done.returncode == 0, done.stderr[-4000:]
    summary = json.loads(done.stdout)
    outcome = summary["outcome"]
    devices = [p["device"] for p in summary["profiles"]]
    assert len(devices) == 3 and len({p["label"] for p in summary["profiles"]}) == 3

    for device in devices:
        choice = outcome["selection"][device]
        assert choice["candidate"] in {"fp32", "int8"}, choice
        row = next(
            r
            for r in outcome["results"]
            if r["device"] == device and r["candidate"] == choice["candidate"]
        )
        assert (
            row["metric_value"] >= outcome["campaign"]["baseline_metric"] - 0.02 - 1e-9
        )  # the constraint

    means = {(r["device"], r["candidate"]): r["latency_ms"]["mean"] for r in outcome["results"]}
    assert len({round(v, 4) for v in means.values()}) > 1
    unthrottled_1core = next(
        p["device"]
        for p in summary["profiles"]
        if p["threads"] == 1 and p["cpu_quota_requested"] is None
    )
    throttled = [p for p in summary["profiles"] if p["cgroup"]]
    for profile in throttled:  # where a quota really applied, it must show in the figures
        for cand in ("fp32", "int8"):
            assert means[(profile["device"], cand)] > means[(unthrottled_1core, cand)], means
        assert not Path(profile["cgroup_path"]).exists()

    assert Path(summary["report"]).is_file()
    leftovers = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(str(out) in part for part in proc.info["cmdline"] or []):
                leftovers.append(proc.pid)
        except psutil.Error:
            continue
    assert leftovers == []
