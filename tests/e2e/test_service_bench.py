"""`edgetailor bench --server`: the file goes up to the service, the service's fleet benchmarks it
on a real agent, and the CLI prints the board's result; an offline board is a one-line error."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shared.hashing import sha256_file
from tests.e2e.conftest import AgentFactory, DigitsArtifacts, cli_env
from tests.e2e.serve import ServeProcess

pytestmark = pytest.mark.slow

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


@pytest.fixture
def serve(
    shared_broker_url: str, base_topic: str, tmp_path: Path, db_url: str
) -> Iterator[ServeProcess]:
    """The service on each store in turn (db_url: SQLite, then PostgreSQL)."""
    process = ServeProcess(shared_broker_url, base_topic, db_url, tmp_path / "home")
    yield process
    process.stop()


def test_bench_through_the_service_reports_the_boards_measurement_and_keeps_the_job(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts,
) -> None:  # fmt: skip
    start_agent("bsvc-a", shared_broker_url)
    serve.start()
    env = {**cli_env(), "EDGETAILOR_TOKEN": serve.token()}
    done = subprocess.run(
        [*CLI, "bench", str(digits_model.tflite), "--device", "bsvc-a", "--eval",
         str(digits_model.eval_npz), "--runs", "5", "--server", serve.url, "--json"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["model_sha256"] == sha256_file(digits_model.tflite)
    assert result["runs"] >= 5 and result["latency_ms"]["p50"] > 0
    assert result["metric"] == "accuracy" and result["eval_samples"] == digits_model.eval_samples
    # The job and its result are the service's, in its database, readable by id.
    headers = {"Authorization": f"Bearer {env['EDGETAILOR_TOKEN']}"}
    job = httpx.get(f"{serve.url}/api/v1/jobs/{result['job_id']}", headers=headers).json()
    assert job["finished"] and job["status"] == "ok" and job["device_id"] == "bsvc-a"
    assert job["result"]["metric_value"] == result["metric_value"]
    unknown = httpx.get(f"{serve.url}/api/v1/jobs/job-unknown", headers=headers)
    assert unknown.status_code == 404 and "job-unknown" in unknown.text

    offline = subprocess.run(
        [*CLI, "bench", str(digits_model.tflite), "--device", "bsvc-nobody", "--server",
         serve.url, "--device-timeout", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert offline.returncode == 2, offline.stdout + offline.stderr
    [line] = offline.stderr.strip().splitlines()
    assert "404" in line and "bsvc-nobody" in line and "never seen" in line
