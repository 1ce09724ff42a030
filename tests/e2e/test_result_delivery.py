"""Acceptance: a result persisted by an agent that was SIGKILLed before publishing it reaches the
host exactly once after the agent restarts."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from host.fleet import Fleet, JobHandle
from host.store import Store
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
    delivered: list[str] = []
    with Fleet(shared_broker_url, base_topic, store=store) as fleet:
        fleet.on_result(lambda handle, _response: delivered.append(handle.job_id))
        job: JobHandle = fleet.submit_benchmark(
            "board-k", digits_model.tflite, eval_path=digits_model.eval_npz, runs=5
        )
        exit_code = agent.wait_exit(timeout=120)
        assert exit_code in (137, -9), agent.log()[-2000:]
        assert not job.done(), "the result was published before the crash point"
        outbox = list((agent.data_dir / "outbox").iterdir())
        assert outbox, "the result must be on disk before the crash"

        agent.restart(env={})
        agent.wait_online(timeout=60)
        result = job.result(timeout=60)
        time.sleep(3)  # several outbox-retry periods: any re-send must not be delivered again

    assert result.job_id == job.job_id and result.accuracy is not None
    assert delivered == [job.job_id]
    assert job.stages == ["accepted", "fetching", "running"]
    assert [r.job_id for r in store.list_results()] == [job.job_id]
    stored = store.get_job(job.job_id)
    assert stored is not None and stored.status == "ok"
    # Acknowledged: the agent has emptied its outbox.
    deadline = time.monotonic() + 10
    while list((agent.data_dir / "outbox").iterdir()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert list((agent.data_dir / "outbox").iterdir()) == []
    store.close()
