"""Acceptance: `edgetailor serve` with real agents over real Mosquitto. A deployment to three
boards, one offline: the two online ones commit; the service is SIGKILLed and started again; the
third board comes online and commits without anyone acting; every board's sequence is used once.
Then the CLI, as a client of the service, reads the status and rolls a board back."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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


def _wait(fetch: Any, done: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = fetch()
        except httpx.HTTPError:
            last = None
        if last is not None and done(last):
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} not reached in {timeout} s; last: {json.dumps(last)[:3000]}")


def _states(doc: dict[str, Any]) -> dict[str, str]:
    return {d["device_id"]: d["state"] for d in doc["devices"]}


def test_a_deploy_survives_a_killed_service_and_reaches_the_board_that_was_offline(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agents = {d: start_agent(d, shared_broker_url) for d in ("svc-a", "svc-b", "svc-c")}
    agents["svc-c"].kill()  # known to the broker, offline (its Will) when the rollout starts
    serve.start()
    token = serve.token()
    headers = {"Authorization": f"Bearer {token}"}
    client = httpx.Client(base_url=serve.url, timeout=30, headers=headers)
    uploaded = client.post(
        "/api/v1/artifacts", params={"filename": "digits.tflite"},
        content=digits_model.tflite.read_bytes(), headers=headers,
    )  # fmt: skip
    assert uploaded.status_code == 201, uploaded.text
    sha = uploaded.json()["sha256"]
    created = client.post(
        "/api/v1/deployments",
        json={"sha256": sha, "devices": ["svc-a", "svc-b", "svc-c"], "waves": "100%",
              "health_runs": 3, "timeout_s": 60, "offline_grace_s": 0},
        headers=headers,
    )  # fmt: skip
    assert created.status_code == 201, created.text
    rollout = created.json()["rollout_id"]

    def fetch() -> dict[str, Any]:
        return client.get(f"/api/v1/deployments/{rollout}").json()

    first = _wait(
        fetch,
        lambda doc: _states(doc)["svc-a"] == _states(doc)["svc-b"] == "committed",
        180, "svc-a and svc-b committed",
    )  # fmt: skip
    assert _states(first)["svc-c"] == "pending"
    status = client.get("/api/v1/devices/svc-c").json()["state"]
    assert status["in_sync"] is False and "offline" in status["reason"]

    serve.kill()
    serve.start()  # the same database: no new token is printed, the stored one still works
    assert serve.token() == token
    client = httpx.Client(base_url=serve.url, timeout=30, headers=headers)
    agents["svc-c"].start()  # nobody acts on the service: it notices and sends the deploy
    done = _wait(fetch, lambda doc: doc["status"] == "done", 180, "the rollout done")
    assert _states(done) == dict.fromkeys(("svc-a", "svc-b", "svc-c"), "committed")

    sequences = {d["device_id"]: d["sequence"] for d in done["devices"]}
    assert len(set(sequences.values())) == 3
    for device, agent in agents.items():
        assert sha256_file(agent.data_dir / "active" / "model.tflite") == sha
        state = json.loads((agent.data_dir / "deploy" / "state.json").read_text())
        assert state["sequence"] == sequences[device], device
        # Each board ran its deploy once, however often the command reached it.
        assert agent.log().count("committed: active") == 1, agent.log()[-2000:]

    # The CLI as a client of the service.
    env = {**cli_env(), "EDGETAILOR_TOKEN": token}
    shown = subprocess.run([*CLI, "status", "--server", serve.url, "--json"], env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    rows = {r["device_id"]: r for r in json.loads(shown.stdout)}
    assert rows["svc-c"]["state"]["in_sync"] is True
    rolled = subprocess.run(
        [*CLI, "rollback", "--server", serve.url, "--device", "svc-a", "--json"], env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rolled.returncode == 1, rolled.stdout + rolled.stderr  # nothing older to go back to
    assert json.loads(rolled.stdout)["error_code"] == "nothing_to_roll_back"
    refused = subprocess.run(
        [*CLI, "rollback", "--server", serve.url, "--device", "svc-a"],
        env={k: v for k, v in env.items() if k != "EDGETAILOR_TOKEN"},
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert refused.returncode == 2 and "token" in refused.stderr
    metrics = client.get("/metrics").text
    assert 'edgetailor_deployment_targets{state="committed"} 3.0' in metrics
