"""`edgetailor serve` as a subprocess of a test, which the test may kill and start again."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from pathlib import Path

from tests.brokers import free_port, wait_for_port
from tests.e2e.conftest import cli_env

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


class ServeProcess:
    def __init__(self, broker: str, base_topic: str, db: str, home: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = db
        self.args = [*CLI, "serve", "--broker", broker, "--base-topic", base_topic, "--db", db,
                     "--port", str(self.port), "--log-level", "info", *extra]  # fmt: skip
        self.env = {**cli_env(), "EDGETAILOR_HOME": str(home)}
        self.log = home / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ServeProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         env=self.env, stdin=subprocess.DEVNULL)  # fmt: skip
        wait_for_port(self.port, timeout=120)
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()

    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def token(self) -> str:
        """The admin token the service printed on its first start."""
        match = re.search(r"^\s+(et_\S+)$", self.log.read_text(), re.MULTILINE)
        assert match, self.log.read_text()[-2000:]
        return match.group(1)
