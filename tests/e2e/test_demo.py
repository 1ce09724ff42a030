"""Acceptance: `edgetailor demo` runs the whole loop on embedded defaults, measures differently
constrained local agents, chooses per device under the constraint, ends on a dashboard that lists
every agent (kept running with --serve until Ctrl-C), and leaves nothing behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from tests.e2e.conftest import cli_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


def _read_json_document(stream: Any) -> dict[str, Any]:
    """The indented JSON summary the demo prints once its dashboard is up (it then keeps
    running): the lines up to the closing brace at the start of a line."""
    lines = []
    for line in stream:
        lines.append(line)
        if line.rstrip("\n") == "}":
            return json.loads("".join(lines))
    raise AssertionError("the demo exited before printing its summary")


def test_demo_measures_each_profile_chooses_per_device_serves_the_dashboard_and_cleans_up(
    tmp_path: Path,
) -> None:
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
    err = (tmp_path / "demo.err").open("w")
    demo = subprocess.Popen(
        [*CLI, "demo", "--agents", "3", "--out", str(out), "--space", str(space), "--json",
         "--model", "builtin:digits_cnn", "--serve"],
        stdout=subprocess.PIPE, stderr=err, text=True, env=cli_env(),
    )  # fmt: skip
    try:
        assert demo.stdout is not None
        summary = _read_json_document(demo.stdout)
        # Still running: the dashboard answers and its API lists the three agents online.
        dashboard = summary["dashboard"]
        assert dashboard["served"] is True and demo.poll() is None
        page = httpx.get(dashboard["url"], timeout=30)
        assert page.status_code == 200 and "dashboard/static/main.js" in page.text
        # The token in the printed address is the service's: reads and mutations with it get
        # past the check (to a 404 for an unknown campaign), without it they are refused.
        token = dashboard["login_url"].split("#token=", 1)[1]
        assert httpx.get(dashboard["url"] + "api/v1/devices", timeout=30).status_code == 401
        listed = httpx.get(
            dashboard["url"] + "api/v1/devices", timeout=30,
            headers={"Authorization": f"Bearer {token}"},
        ).json()  # fmt: skip
        assert sorted(d["device_id"] for d in listed if d["online"]) == dashboard["devices"]
        assert len(dashboard["devices"]) == 3
        cancel = dashboard["url"] + "api/v1/campaigns/no-such-campaign/cancel"
        with_token = httpx.post(cancel, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        assert with_token.status_code == 404, with_token.text
        assert httpx.post(cancel, timeout=30).status_code == 401
    finally:
        demo.send_signal(signal.SIGINT)  # Ctrl-C
        returncode = demo.wait(timeout=120)
        err.close()
    assert returncode == 0, (tmp_path / "demo.err").read_text()[-4000:]
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
