"""Acceptance: `edgetailor bench --json` and `edgetailor devices --json` against two real agents."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import AgentFactory, DigitsArtifacts, cli_env

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


def _run_cli(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, env=cli_env()
    )


def _devices(broker: str, base_topic: str, db: str) -> dict[str, dict[str, Any]]:
    done = _run_cli("devices", "--broker", broker, "--base-topic", base_topic, "--db", db, "--json")
    assert done.returncode == 0, done.stderr
    return {row["device_id"]: row for row in json.loads(done.stdout)}


def test_bench_on_two_agents_reports_latency_memory_and_the_torch_accuracy(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    for device_id in ("board-a", "board-b"):
        start_agent(device_id, shared_broker_url)
    db = f"sqlite:///{tmp_path / 'host.db'}"
    benches = {
        device_id: subprocess.Popen(
            [
                *CLI,
                "bench",
                str(digits_model.tflite),
                "--device",
                device_id,
                "--broker",
                shared_broker_url,
                "--base-topic",
                base_topic,
                "--eval",
                str(digits_model.eval_npz),
                "--threads",
                "1",
                "--runs",
                "20",
                "--timeout",
                "120",
                "--db",
                db,
                "--json",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=cli_env(),
        )
        for device_id in ("board-a", "board-b")
    }
    for device_id, proc in benches.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{device_id}: {err}"
        result = json.loads(out)
        latency = result["latency_ms"]
        assert set(latency) >= {"mean", "p50", "p90", "p99"}
        assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
        assert result["peak_rss_mb"] > 0 and result["load_ms"] > 0
        assert result["size_bytes"] == digits_model.tflite.stat().st_size
        assert result["eval_samples"] == digits_model.eval_samples
        assert digits_model.torch_accuracy > 0.9
        assert abs(result["accuracy"] - digits_model.torch_accuracy) <= 0.01, (
            result["accuracy"],
            digits_model.torch_accuracy,
        )


def test_devices_json_shows_both_agents_online_and_one_offline_after_it_is_killed(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory, tmp_path: Path
) -> None:
    agents = [start_agent(device_id, shared_broker_url) for device_id in ("board-a", "board-b")]
    db = f"sqlite:///{tmp_path / 'host.db'}"
    time.sleep(1.5)  # one telemetry interval, so that the listing shows it

    listed = _devices(shared_broker_url, base_topic, db)
    assert set(listed) == {"board-a", "board-b"}
    for row in listed.values():
        assert row["online"] is True
        assert row["cores"] >= 1 and row["ram_mb"] > 0 and row["arch"]
        assert row["agent_version"]
        assert "tflite" in {runtime["name"] for runtime in row["runtimes"]}

    agents[1].kill()
    deadline = time.monotonic() + 20
    while True:
        listed = _devices(shared_broker_url, base_topic, db)
        if listed["board-b"]["online"] is False or time.monotonic() > deadline:
            break
    assert (listed["board-a"]["online"], listed["board-b"]["online"]) == (True, False)
    assert listed["board-b"]["cores"] >= 1  # its retained birth still describes it


def test_bench_for_a_device_that_is_not_there_fails_with_a_clear_message(
    shared_broker_url: str, base_topic: str, digits_model: DigitsArtifacts, tmp_path: Path
) -> None:
    done = _run_cli(
        "bench", str(digits_model.tflite), "--device", "nobody", "--broker", shared_broker_url,
        "--base-topic", base_topic, "--device-timeout", "1", "--db", f"sqlite:///{tmp_path / 'h.db'}",
    )  # fmt: skip
    assert done.returncode != 0
    assert "'nobody' is never seen" in done.stderr


def test_bench_against_an_unreachable_broker_names_it(
    digits_model: DigitsArtifacts, tmp_path: Path
) -> None:
    from tests.brokers import free_port

    url = f"mqtt://127.0.0.1:{free_port()}"
    done = _run_cli(
        "bench", str(digits_model.tflite), "--device", "x", "--broker", url,
        "--db", f"sqlite:///{tmp_path / 'h.db'}",
    )  # fmt: skip
    assert done.returncode != 0
    assert f"cannot reach the MQTT broker at {url}" in done.stderr
