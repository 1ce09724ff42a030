"""Cancel and telemetry: a running job can be cancelled; telemetry flows on its own topic."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
import paho.mqtt.client as mqtt
import psutil

from shared.broker_url import parse_broker_url
from shared.messages import BenchmarkCmd, CancelCmd, PingCmd, Telemetry, decode
from shared.topics import Topics
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost


def test_running_job_is_cancelled_its_worker_killed_and_the_agent_serves_on(
    model_dir: Path, start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    agent = start_agent()
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    slow = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(job_id="long", model=model, min_s=3600.0, timeout_s=600.0),
    )
    minihost.wait_for(
        lambda: any(
            r.status == "progress" and r.data["stage"] == "running"
            for r in minihost.responses_to(slow)
        ),
        30,
        "running stage",
    )
    cancel = minihost.send(device_id, "cancel", CancelCmd(job_id="long"))
    answer = minihost.wait_final(cancel, 10)
    assert answer.status == "ok" and answer.data == {"job_id": "long", "cancelled": True}
    final = minihost.wait_final(slow, 15)
    assert final.status == "error" and final.error is not None and final.error.code == "cancelled"
    assert agent.proc is not None and psutil.Process(agent.proc.pid).children(recursive=True) == []
    unknown = minihost.send(device_id, "cancel", CancelCmd(job_id="never-sent"))
    assert minihost.wait_final(unknown, 10).data == {"job_id": "never-sent", "cancelled": False}
    assert minihost.wait_final(minihost.send(device_id, "ping", PingCmd()), 10).status == "ok"


def test_telemetry_is_published_at_the_configured_interval(
    start_agent: Callable[..., AgentProcess],
    shared_broker_url: str,
    base_topic: str,
    device_id: str,
) -> None:
    start_agent(["--telemetry-interval", "0.5"])
    received: list[Telemetry] = []
    address = parse_broker_url(shared_broker_url)
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = lambda c, u, msg: received.append(decode(msg.payload).body)  # type: ignore[arg-type]
    client.connect(address.host, address.port)
    client.subscribe(Topics(base_topic).telemetry(device_id), qos=1)
    client.loop_start()
    try:
        deadline = time.monotonic() + 10
        while len(received) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        client.loop_stop()
        client.disconnect()
    assert len(received) >= 3
    sample = received[-1]
    assert isinstance(sample, Telemetry)
    assert sample.mem_total_mb > sample.mem_used_mb > 0
    assert 5 < sample.agent_rss_mb < 200
    assert 0 <= sample.cpu_percent <= 100 * (psutil.cpu_count() or 1)
    assert msgspec.to_builtins(sample).keys() >= {"load_avg_1m", "cpu_freq_mhz", "temperature_c"}


def test_commands_beyond_the_queue_bound_are_refused_as_busy_and_run_when_sent_again(
    model_dir: Path, start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    start_agent(extra_args=["--max-queued-jobs", "2"])
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    slow = [
        minihost.send(
            device_id,
            "benchmark",
            BenchmarkCmd(job_id=f"slow-{i}", model=model, min_s=3600.0, timeout_s=600.0),
        )
        for i in range(2)
    ]
    extra = BenchmarkCmd(job_id="one-too-many", model=model, runs=3, min_s=0.0)
    refused_id = minihost.send(device_id, "benchmark", extra, msg_id="cmd-one-too-many")
    refused = minihost.wait_final(refused_id, 15)
    assert refused.status == "error" and refused.error is not None
    assert refused.error.code == "busy"

    for i, cmd_id in enumerate(slow):
        minihost.send(device_id, "cancel", CancelCmd(job_id=f"slow-{i}"))
        assert minihost.wait_final(cmd_id, 30).error.code == "cancelled"
    # The refused command was not journaled: the same command id runs once room is back.
    again = minihost.send(device_id, "benchmark", extra, msg_id="cmd-one-too-many")
    minihost.wait_for(
        lambda: any(r.status == "ok" for r in minihost.responses_to(again)), 60, "the re-sent job"
    )
    finals = [r for r in minihost.responses_to(again) if r.status == "ok"]
    assert finals[0].data["job_id"] == "one-too-many"
