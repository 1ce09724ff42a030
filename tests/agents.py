"""Run device agents as real subprocesses in tests (``python -m device_agent.cli``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt

from device_agent.serve.client import InferenceClient, InferenceError
from shared.broker_url import parse_broker_url
from shared.errors import ValidationError
from shared.messages import decode
from shared.topics import STATUS_ONLINE, Topics

REPO_ROOT = Path(__file__).resolve().parents[1]


class AgentProcess:
    """One ``edgetailor-agent`` process; its stdout/stderr go to ``data_dir/agent.log``."""

    def __init__(
        self,
        broker_url: str,
        device_id: str,
        data_dir: Path,
        base_topic: str,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        python: str = sys.executable,
        cwd: Path | None = None,
    ) -> None:
        self.python = python  # e.g. a board-like venv without torch or ai-edge-litert
        self.cwd = Path(cwd) if cwd is not None else REPO_ROOT  # a relative data_dir is under it
        self.broker_url = broker_url
        self.device_id = device_id
        self.data_dir = Path(data_dir)
        self.base_topic = base_topic
        self.extra_args = list(extra_args or [])
        self.env = dict(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def log_path(self) -> Path:
        return self.cwd / self.data_dir / "agent.log"

    def command(self) -> list[str]:
        return [
            self.python, "-m", "device_agent.cli",
            "--broker", self.broker_url,
            "--id", self.device_id,
            "--data-dir", str(self.data_dir),
            "--base-topic", self.base_topic,
            "--log-level", "debug",
            *self.extra_args,
        ]  # fmt: skip

    def start(self) -> AgentProcess:
        (self.cwd / self.data_dir).mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1", **self.env}
        self.started_at = time.time()
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=env, cwd=str(self.cwd),
            )  # fmt: skip
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as on a power cut: no offline message, the broker sends the Last Will."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 15.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def wait_exit(self, timeout: float = 30.0) -> int:
        if self.proc is None:
            raise RuntimeError("agent was never started")
        return self.proc.wait(timeout=timeout)

    def restart(self, env: dict[str, str] | None = None) -> AgentProcess:
        """Kill (if running) and start again on the same data dir; ``env`` replaces the extra env."""
        self.kill()
        if env is not None:
            self.env = dict(env)
        return self.start()

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def wait_online(self, timeout: float = 30.0) -> None:
        """Wait for a birth published by this process's run, then for the retained ``online``."""
        topics = Topics(self.base_topic)
        address = parse_broker_url(self.broker_url)
        fresh_birth = threading.Event()
        online = threading.Event()
        since = self.started_at - 1.0

        def on_message(client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
            if msg.topic == topics.birth(self.device_id):
                try:
                    if decode(msg.payload).ts >= since:
                        fresh_birth.set()
                except ValidationError:
                    pass
            elif (
                msg.topic == topics.status(self.device_id)
                and msg.payload == STATUS_ONLINE
                and fresh_birth.is_set()
            ):
                online.set()

        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"wait-{uuid.uuid4().hex[:8]}"
        )
        client.on_message = on_message
        tls = self._tls_files()
        if address.tls or tls["--tls-ca"]:
            client.tls_set(
                ca_certs=tls["--tls-ca"], certfile=tls["--tls-cert"], keyfile=tls["--tls-key"]
            )
        client.connect(address.host, address.port)
        client.subscribe([(topics.birth(self.device_id), 1), (topics.status(self.device_id), 1)])
        client.loop_start()
        try:
            deadline = time.monotonic() + timeout
            while not online.is_set():
                if not self.running:
                    raise RuntimeError(f"agent {self.device_id} exited:\n{self.log()[-3000:]}")
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"agent {self.device_id} not online after {timeout}s:\n{self.log()[-3000:]}"
                    )
                if fresh_birth.is_set():
                    # The status message may have been consumed before the birth: re-subscribe
                    # to receive the retained status again.
                    client.unsubscribe(topics.status(self.device_id))
                    client.subscribe(topics.status(self.device_id), 1)
                online.wait(0.2)
        finally:
            client.loop_stop()
            client.disconnect()

    def _tls_files(self) -> dict[str, str | None]:
        """The agent's own TLS files, so the waiting client can reach a TLS-only broker too."""
        files: dict[str, str | None] = {"--tls-ca": None, "--tls-cert": None, "--tls-key": None}
        for flag, value in zip(self.extra_args, self.extra_args[1:], strict=False):
            if flag in files:
                files[flag] = value
        return files

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.terminate()


def wait_serving(client: InferenceClient, sha256: str, timeout: float = 60.0) -> dict[str, Any]:
    """The agent's local endpoint's model description, once it serves ``sha256``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            info = client.model()
            if info["sha256"] == sha256:
                return info
        except InferenceError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the endpoint does not serve {sha256[:12]}")
        time.sleep(0.1)
