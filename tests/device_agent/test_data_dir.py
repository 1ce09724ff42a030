"""The data dir: a relative one is made absolute, and only one agent may use it at a time."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from shared.messages import BenchmarkCmd, PingCmd
from shared.results import BenchmarkResult, from_data
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=3, min_s=0.0, timeout_s=60.0)


def test_relative_data_dir_is_made_absolute_and_benchmarks_run_from_the_job_folder(
    model_dir: Path,
    tmp_path: Path,
    shared_broker_url: str,
    base_topic: str,
    device_id: str,
    minihost: MiniHost,
) -> None:
    agent = AgentProcess(shared_broker_url, device_id, Path("agents/a1"), base_topic, cwd=tmp_path)
    with agent:
        agent.wait_online()
        model = minihost.offer(model_dir / "float.tflite", "tflite")
        cmd = minihost.send(
            device_id, "benchmark", BenchmarkCmd(job_id="rel", model=model, chunk_size=1024, **FAST)
        )
        result = from_data(result_of(minihost.wait_final(cmd, 60)), BenchmarkResult)
    assert result.model_sha256 == model.sha256 and result.runs >= 3
    absolute = tmp_path / "agents" / "a1"
    assert (absolute / "store" / f"{model.sha256}.tflite").is_file()
    assert f"data dir {absolute}," in agent.log()


def test_second_agent_on_the_same_data_dir_exits_2_naming_the_first_which_keeps_serving(
    shared_broker_url: str,
    base_topic: str,
    data_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
) -> None:
    first = start_agent()
    assert first.proc is not None
    second = AgentProcess(shared_broker_url, "other-agent", data_dir, base_topic).start()
    assert second.wait_exit(60) == 2
    expected = (
        f"edgetailor-agent: data dir {data_dir} is in use by another agent (pid "
        f"{first.proc.pid}); give each agent its own --data-dir, or stop the other one first"
    )
    print(f"\nthe second agent says: {expected}")
    assert expected in second.log()
    ping = minihost.send(device_id, "ping", PingCmd())
    assert minihost.wait_final(ping, 30).status == "ok"


def test_lock_of_a_killed_agent_never_blocks_the_next_one(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    agent = start_agent()
    agent.kill()  # SIGKILL: no cleanup runs; the kernel drops the lock with the process
    agent.start()
    agent.wait_online()
    ping = minihost.send(device_id, "ping", PingCmd())
    assert minihost.wait_final(ping, 30).status == "ok"
