"""Under systemd (``Type=notify``, ``WatchdogSec=``) the agent says READY=1 and keeps feeding the
watchdog: a real agent, a real notify socket of the test's own."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path

from tests.agents import AgentProcess


def test_agent_tells_systemd_it_is_ready_and_pets_the_watchdog(
    tmp_path: Path, start_agent: Callable[..., AgentProcess]
) -> None:
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        sock.settimeout(1.0)
        # WATCHDOG_PID is left out: systemd sets it to the service's pid, unknown before start.
        agent = start_agent(env={"NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "2000000"})
        received: list[str] = []
        deadline = time.monotonic() + 30
        while received.count("WATCHDOG=1") < 2 and time.monotonic() < deadline:
            try:
                received.append(sock.recv(256).decode())
            except TimeoutError:
                continue
        assert received[0] == "READY=1", received
        assert received.count("WATCHDOG=1") >= 2, received
        agent.terminate()
        assert agent.proc is not None and agent.proc.returncode == 0
        while True:
            try:
                received.append(sock.recv(256).decode())
            except TimeoutError:
                break
        assert "STOPPING=1" in received
