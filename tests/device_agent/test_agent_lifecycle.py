"""Birth, status and Last Will of a real agent process on a real Mosquitto."""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.messages import Birth, PingCmd, decode
from shared.topics import Topics
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost


def test_birth_is_retained_with_real_capabilities_and_status_goes_offline_via_will_after_sigkill(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, base_topic: str, device_id: str
) -> None:
    agent = start_agent(["--tag", "site=lab", "--tag", "rack=3"])
    topics = Topics(base_topic)
    # A client connecting after the agent gets birth and status as retained messages.
    late = MiniHost(agent.broker_url, base_topic).start()
    try:
        late.wait_for(lambda: topics.birth(device_id) in late.retained, 10, "retained birth")
        late.wait_for(
            lambda: late.retained.get(topics.status(device_id)) == b"online", 10, "online"
        )
        birth = decode(late.retained[topics.birth(device_id)]).body
    finally:
        late.stop()
    assert isinstance(birth, Birth)
    assert birth.cores == os.cpu_count() and birth.ram_mb > 100
    assert birth.tags == {"site": "lab", "rack": "3"}
    runtimes = {r.name: r for r in birth.runtimes}
    assert runtimes["tflite"].module == "ai_edge_litert"
    assert runtimes["tflite"].version == importlib.metadata.version("ai-edge-litert")
    assert runtimes["onnx"].version == importlib.metadata.version("onnxruntime")
    assert birth.arch and birth.cpu_model and birth.python

    agent.kill()
    minihost.wait_for(
        lambda: minihost.retained.get(topics.status(device_id)) == b"offline", 90, "Last Will"
    )


def test_clean_shutdown_publishes_offline_and_ping_is_answered(
    start_agent: Callable[..., AgentProcess], minihost: MiniHost, base_topic: str, device_id: str
) -> None:
    agent = start_agent()
    ping_id = minihost.send(device_id, "ping", PingCmd())
    response = minihost.wait_final(ping_id, 10)
    assert response.status == "ok" and response.data["agent_version"]
    assert agent.terminate() == 0
    topics = Topics(base_topic)
    minihost.wait_for(
        lambda: minihost.retained.get(topics.status(device_id)) == b"offline", 5, "offline"
    )


def test_a_data_dir_that_cannot_be_created_is_a_clear_error_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from device_agent.cli import main

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code = main(
        ["--broker", "mqtt://127.0.0.1:1", "--id", "pi-1", "--data-dir", str(blocker / "d")]
    )
    assert code == 2
    assert "cannot prepare --data-dir" in capsys.readouterr().err
