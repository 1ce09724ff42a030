"""Results survive a SIGKILL at the worst moment; commands run once however often they arrive."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from shared.messages import BenchmarkCmd
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)


def _outbox(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "outbox").glob("*.json"))


def _stages(minihost: MiniHost, cmd_id: str, stage: str) -> int:
    return sum(
        1
        for r in minihost.responses_to(cmd_id)
        if r.status == "progress" and r.data["stage"] == stage
    )


def test_result_persisted_before_a_sigkill_is_delivered_after_restart_and_not_again_after_ack(
    model_dir: Path,
    shared_broker_url: str,
    base_topic: str,
    device_id: str,
    data_dir: Path,
    minihost: MiniHost,
) -> None:
    agent = AgentProcess(
        shared_broker_url, device_id, data_dir, base_topic, ["--outbox-retry-s", "1"],
        env={"EDGETAILOR_AGENT_CRASH_AT": "after_result_persisted"},
    )  # fmt: skip
    try:
        agent.start()
        agent.wait_online()
        model = minihost.offer(model_dir / "float.tflite", "tflite")
        cmd_id = minihost.send(
            device_id, "benchmark", BenchmarkCmd(job_id="crash", model=model, **FAST)
        )
        assert agent.wait_exit(60) == 137
        assert minihost.finals(cmd_id) == []
        assert len(_outbox(data_dir)) == 1

        agent.restart(env={})
        result = minihost.wait_final(cmd_id, 30)
        assert result.status == "ok" and result.data["job_id"] == "crash"
        minihost.wait_for(lambda: not _outbox(data_dir), 15, "outbox emptied by the ack")
        delivered = minihost.finals(cmd_id)
        assert len({r.message.msg_id for r in delivered}) == 1  # re-sends keep one msg_id
        # The job ran once: no second "accepted" after the restart, as its result was persisted.
        assert _stages(minihost, cmd_id, "accepted") == 1

        agent.terminate()
        agent.start()
        agent.wait_online()
        time.sleep(2.5)  # > outbox retry period: an unacked result would have been re-sent
        assert len(minihost.finals(cmd_id)) == len(delivered)
    finally:
        agent.terminate()


def test_command_delivered_twice_is_executed_once(
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    cmd = BenchmarkCmd(job_id="twice", model=model, **FAST)
    cmd_id = minihost.send(device_id, "benchmark", cmd)
    minihost.send(device_id, "benchmark", cmd, msg_id=cmd_id)  # while it is queued or running
    assert minihost.wait_final(cmd_id, 60).status == "ok"
    minihost.wait_for(lambda: not _outbox(data_dir), 15, "outbox emptied by the ack")

    minihost.send(device_id, "benchmark", cmd, msg_id=cmd_id)  # after it was acknowledged
    duplicate = minihost.wait_for(
        lambda: [r for r in minihost.responses_to(cmd_id) if r.data and r.data.get("duplicate")],
        10,
        "duplicate answer",
    )[0]
    assert duplicate.status == "ok" and duplicate.data == {"duplicate": True, "job_id": "twice"}
    assert _stages(minihost, cmd_id, "accepted") == 1
    assert _stages(minihost, cmd_id, "running") == 1
    assert (
        len(
            [r for r in minihost.finals(cmd_id) if not (r.message.body.data or {}).get("duplicate")]
        )
        == 1
    )


def test_duplicate_of_a_done_but_unacknowledged_command_re_sends_the_same_result(
    model_dir: Path,
    shared_broker_url: str,
    base_topic: str,
    start_agent: Callable[..., AgentProcess],
    device_id: str,
) -> None:
    start_agent(["--outbox-retry-s", "600"])
    with MiniHost(shared_broker_url, base_topic, auto_ack=False) as host:
        model = host.offer(model_dir / "float.tflite", "tflite")
        cmd = BenchmarkCmd(job_id="noack", model=model, **FAST)
        cmd_id = host.send(device_id, "benchmark", cmd)
        host.wait_final(cmd_id, 60)
        host.send(device_id, "benchmark", cmd, msg_id=cmd_id)
        again = host.wait_for(lambda: len(host.finals(cmd_id)) >= 2, 10, "re-sent result")
        finals = host.finals(cmd_id)
        assert again and finals[0].message.msg_id == finals[1].message.msg_id
        assert finals[1].message.body.status == "ok"
        assert _stages(host, cmd_id, "accepted") == 1
