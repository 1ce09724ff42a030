"""``edgetailor-agent --check`` and what the agent says while it cannot reach its broker."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from pathlib import Path

from tests.agents import REPO_ROOT, AgentProcess
from tests.brokers import MosquittoProcess, free_port


def _check(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "device_agent.cli", "--check", *args],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=env,
        timeout=120,
    )


def _line(output: str, status: str, what: str) -> str:
    for line in output.splitlines():
        if re.match(rf"^  {re.escape(status)}\s+{re.escape(what)}\s{{2}}", line):
            return line
    raise AssertionError(f"no {status} line for {what!r} in:\n{output}")


def test_check_reports_a_missing_tls_file_and_an_unreachable_broker_and_exits_1(
    tmp_path: Path,
) -> None:
    port = free_port()
    missing = tmp_path / "tls" / "ca.crt"
    proc = _check(
        "--broker", f"mqtts://127.0.0.1:{port}", "--id", "pi-01",
        "--data-dir", str(tmp_path / "data"), "--tls-ca", str(missing),
    )  # fmt: skip
    print(f"\n{proc.stdout}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert _line(proc.stdout, "FAIL", "tls ca").endswith(f"  {missing} does not exist")
    assert _line(proc.stdout, "FAIL", "broker").endswith(
        f"  mqtts://127.0.0.1:{port} unreachable: Connection refused (nothing listens on that port)"
    )
    assert "data dir" in _line(proc.stdout, "ok", "data dir")
    assert "ai_edge_litert" in _line(proc.stdout, "ok", "runtime tflite")
    assert proc.stdout.rstrip().endswith("2 problem(s) found: fix them before starting the agent")


def test_check_of_a_good_configuration_names_where_each_setting_came_from_and_exits_0(
    tmp_path: Path, shared_broker_url: str
) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(f'broker = "{shared_broker_url}"\ndata_dir = "{tmp_path / "data"}"\n')
    proc = _check(
        "--config", str(config), "--id", "pi-02",
        env={"PATH": "/usr/bin:/bin", "EDGETAILOR_AGENT_THREADS": "2", "PYTHONPATH": str(REPO_ROOT)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (
        f"{config}; broker from {config}, data_dir from {config}, id from --id, threads from "
        "EDGETAILOR_AGENT_THREADS" in _line(proc.stdout, "ok", "config")
    )
    assert "accepted an MQTT connection" in _line(proc.stdout, "ok", "broker")
    assert proc.stdout.rstrip().endswith("no problems found")


def test_check_names_a_broker_that_refuses_the_certificate_less_client(tmp_path: Path) -> None:
    port = free_port()
    broker = MosquittoProcess(
        tmp_path / "mq", port, extra_config=f"listener {port} 127.0.0.1\nallow_anonymous false\n"
    )
    broker.start()
    try:
        proc = _check("--broker", broker.url, "--id", "pi-03", "--data-dir", str(tmp_path / "d"))
    finally:
        broker.stop()
    assert proc.returncode == 1
    assert "the broker refused the connection: Not authorized" in _line(
        proc.stdout, "FAIL", "broker"
    )


def test_agent_without_a_broker_logs_each_attempt_with_its_reason_and_connects_once_one_listens(
    tmp_path: Path, base_topic: str
) -> None:
    port = free_port()
    agent = AgentProcess(f"mqtt://127.0.0.1:{port}", "lonely", tmp_path / "agent", base_topic)
    broker = MosquittoProcess(tmp_path / "mq", port)
    with agent:
        expected = (
            f"cannot reach the broker mqtt://127.0.0.1:{port}: Connection refused (nothing "
            "listens on that port); next attempt in 1 s"
        )
        deadline = time.monotonic() + 60
        while "attempt 2)" not in agent.log():
            assert agent.running and time.monotonic() < deadline, agent.log()
            time.sleep(0.1)
        print(f"\nthe agent logs: {expected}")
        assert expected in agent.log()
        assert f"connecting to mqtt://127.0.0.1:{port} (attempt 1)" in agent.log()
        broker.start()
        try:
            agent.wait_online(60)
        finally:
            broker.stop()
