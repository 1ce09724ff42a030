"""A command sent while its device is offline is not lost: the host sends it again when the device's
status turns online, and the agent's journal keeps it from running twice."""

from __future__ import annotations

import time

import msgspec
import pytest

from host.fleet import Fleet
from shared.messages import BenchmarkCmd
from tests.e2e.conftest import AgentFactory, DigitsArtifacts

pytestmark = pytest.mark.slow


def test_a_job_sent_while_the_device_is_offline_runs_once_when_it_comes_back(
    shared_broker_url: str, start_agent: AgentFactory, digits_model: DigitsArtifacts,
    base_topic: str,
) -> None:  # fmt: skip
    agent = start_agent("board-away", shared_broker_url)
    with Fleet(shared_broker_url, base_topic) as fleet:
        fleet.wait_for_device("board-away", timeout=30)
        model = fleet.offer(digits_model.tflite)
        agent.kill()
        deadline = time.monotonic() + 30
        while fleet.devices()["board-away"].online and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not fleet.devices()["board-away"].online, "the Will should mark the device offline"

        command = BenchmarkCmd(job_id="job-sent-while-away", model=model, runs=5, min_s=0.1)
        job = fleet.send_command("board-away", command)
        time.sleep(1.0)  # published into the void: nobody is subscribed to the command topic
        assert not job.done()

        agent.restart()
        result = job.result(timeout=90)

    assert result.job_id == "job-sent-while-away"
    assert result.model_sha256 == model.sha256
    # The agent ran it once even if both the original and the re-sent command reached it.
    assert job.stages.count("running") == 1, job.stages
    assert msgspec.to_builtins(result.latency_ms)["p50"] > 0
