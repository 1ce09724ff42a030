"""A command recorded while its device is offline is not lost: the command driver publishes it when
the device's status turns online, and the agent's journal keeps it from running twice."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import pytest

from host.commands.bench import wait_benchmark
from host.fleet import Fleet
from shared.messages import BenchmarkCmd
from tests.e2e.conftest import AgentFactory, DigitsArtifacts

pytestmark = pytest.mark.slow


def test_a_job_sent_while_the_device_is_offline_runs_once_when_it_comes_back(
    shared_broker_url: str, start_agent: AgentFactory, digits_model: DigitsArtifacts,
    base_topic: str, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent("board-away", shared_broker_url)
    with Fleet(shared_broker_url, base_topic, store=f"sqlite:///{tmp_path / 'host.db'}") as fleet:
        fleet.wait_for_device("board-away", timeout=30)
        model = fleet.offer(digits_model.tflite)
        agent.kill()
        deadline = time.monotonic() + 30
        while fleet.devices()["board-away"].online and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fleet.devices()["board-away"].online, "the Will should mark the device offline"

        job = fleet.commands.commands.new_id()
        command = BenchmarkCmd(job_id=job, model=model, runs=5, min_s=0.1)
        fleet.commands.send("board-away", command, command_id=job)
        time.sleep(1.0)  # the driver keeps it: nobody is subscribed to the command topic
        recorded = fleet.commands.commands.get(job)
        assert recorded is not None and (recorded.state, recorded.attempts) == ("pending", 0)

        agent.restart()
        result = wait_benchmark(fleet, job, 90)
        stored = fleet.commands.stored[job]

    assert result.job_id == job
    assert result.model_sha256 == model.sha256
    assert stored == 1
    # The agent ran it once, however often the command reached it.
    assert agent.log().count(f"job {job} done") == 1, agent.log()[-3000:]
    assert msgspec.to_builtins(result.latency_ms)["p50"] > 0
