"""Acceptance: a result persisted by an agent that was SIGKILLed before publishing it reaches the
host exactly once after the agent restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from host.commands import CommandStore
from host.commands.bench import poll_benchmark, submit_benchmark, wait_benchmark
from host.fleet import Fleet
from host.store import Store
from shared.results import BenchmarkResult
from tests.e2e.conftest import AgentFactory, DigitsArtifacts

pytestmark = pytest.mark.slow


def test_an_agent_killed_after_persisting_a_result_delivers_it_exactly_once_after_restart(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent(
        "board-k", shared_broker_url,
        extra_args=["--outbox-retry-s", "1"],
        env={"EDGETAILOR_AGENT_CRASH_AT": "after_result_persisted"},
    )  # fmt: skip
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    with Fleet(shared_broker_url, base_topic, store=store) as fleet:
        job = submit_benchmark(
            fleet, "board-k", digits_model.tflite, eval_path=digits_model.eval_npz, runs=5
        )
        exit_code = agent.wait_exit(timeout=120)
        assert exit_code in (137, -9), agent.log()[-2000:]
        assert poll_benchmark(fleet, job) is None, "the result was published before the crash"
        outbox = list((agent.data_dir / "outbox").iterdir())
        assert outbox, "the result must be on disk before the crash"

        agent.restart(env={})
        agent.wait_online(timeout=60)
        result = wait_benchmark(fleet, job, 60)
        time.sleep(3)  # several outbox-retry periods: any re-send must not be stored again
        stored_times = fleet.commands.stored[job]

    assert result.job_id == job and result.accuracy is not None
    assert stored_times == 1
    # The result read back from the store is the agent's struct, as it sent it.
    answered = [c for c in CommandStore(store).list() if c.response_msg_id is not None]
    assert [c.command_id for c in answered] == [job]
    assert answered[0].state == "answered" and answered[0].stage == "running"
    assert answered[0].result_as(BenchmarkResult) == result
    # Acknowledged: the agent has emptied its outbox.
    deadline = time.monotonic() + 10
    while list((agent.data_dir / "outbox").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((agent.data_dir / "outbox").iterdir()) == []
    store.close()
