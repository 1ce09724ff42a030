"""The agent's side of the inference endpoint: the listening socket and the worker that serves it.

The agent binds the socket itself and hands it to the worker (``pass_fds``): if the worker dies it
is started again on the same socket, and clients connecting meanwhile wait in the backlog instead
of being refused. The worker loads numpy and the runtime; the agent only exchanges JSON lines with
it (``load``, ``stats``), so its own footprint does not change. Request counts are summed here, so
the totals in telemetry survive a worker restart.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import resource
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

from device_agent.serve.address import ServeAddress
from shared.errors import ConfigError
from shared.messages import ServingLatency, ServingStats

logger = logging.getLogger(__name__)

RESTART_MIN_S = 1.0
RESTART_MAX_S = 30.0
STATS_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class ServedModel:
    """What the worker should serve: the active release's model and how to run it."""

    sha256: str
    path: str
    format: str
    threads: int | None = None
    runtime: str | None = None


def bind(address: ServeAddress) -> socket.socket:
    """The listening socket; a stale Unix socket file is replaced, a live one is an error."""
    path = address.unix_path
    if path is not None:
        if path.exists() or path.is_symlink():
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(str(path))
                except OSError:
                    path.unlink()  # nobody answers: left by an agent that was killed
                else:
                    raise ConfigError(
                        f"--serve {address}: another process already serves on {path}"
                    )
        if not path.parent.is_dir():
            raise ConfigError(
                f"--serve {address}: directory {path.parent} does not exist; create it or use "
                "RuntimeDirectory= in the systemd unit"
            )
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            # Applications in the agent's group may connect; the agent's umask may be stricter.
            os.chmod(path, 0o660)
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--serve {address}: cannot listen there: {exc}") from exc
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as exc:
            sock.close()
            raise ConfigError(f"--serve {address}: cannot listen there: {exc}") from exc
        if not address.loopback:
            logger.warning(
                "the inference endpoint listens on %s, beyond this board, without authentication",
                address,
            )
    sock.listen(128)
    return sock


class InferenceServer:
    """Supervises one worker process serving the active model on ``address``."""

    def __init__(
        self,
        address: ServeAddress,
        *,
        memory_bytes: int | None = None,
        cpu_affinity: tuple[int, ...] | None = None,
    ) -> None:
        self.address = address
        self.memory_bytes = memory_bytes
        self.cpu_affinity = cpu_affinity
        self._sock = bind(address)
        self._desired: ServedModel | None = None
        self._initial: ServedModel | None = None  # what the running worker was started with
        self._proc: subprocess.Popen[bytes] | None = None
        self._write_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[threading.Event, list[dict[str, Any]]]] = {}
        self._waiting_lock = threading.Lock()
        self._stopping = threading.Event()
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._requests_total = 0
        self._errors_total = 0
        self.serving_sha256: str | None = None
        self.restarts = 0

    # -- public ----------------------------------------------------------------------------------
    def start(self, model: ServedModel | None) -> None:
        self._desired = model
        self._thread = threading.Thread(target=self._supervise, name="serve", daemon=True)
        self._thread.start()
        logger.info("serving the active model on %s", self.address)

    def load(self, model: ServedModel | None) -> None:
        """Serve ``model`` from now on (returns at once; the worker swaps when it has loaded it)."""
        if model == self._desired:
            return
        self._desired = model
        if model is not None and self._ready.is_set():
            self._send_load(model)

    def stats(self) -> ServingStats | None:
        """Requests since the previous call, and in total; None while no worker answers."""
        reply = self._call({"op": "stats"}, STATS_TIMEOUT_S)
        if reply is None:
            return None
        self._requests_total += int(reply["requests"])
        self._errors_total += int(reply["errors"])
        latency = reply.get("latency_ms")
        return ServingStats(
            model_sha256=reply.get("model_sha256"),
            runtime=(reply.get("runtime") or None) and str(reply["runtime"])[:128],
            interval_s=float(reply["interval_s"]),
            requests=int(reply["requests"]),
            errors=int(reply["errors"]),
            requests_total=self._requests_total,
            errors_total=self._errors_total,
            latency_ms=ServingLatency(**latency) if latency else None,
        )

    def wait_ready(self, timeout: float) -> bool:
        return self._ready.wait(timeout)

    def stop(self) -> None:
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(OSError, ValueError):
                proc.stdin.close()  # type: ignore[union-attr]
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._sock.close()
        if self.address.is_unix and self.address.unix_path is not None:
            self.address.unix_path.unlink(missing_ok=True)

    # -- worker process --------------------------------------------------------------------------
    def _preexec(self) -> Any:
        memory, cpus = self.memory_bytes, self.cpu_affinity

        def apply() -> None:
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
            if cpus:
                os.sched_setaffinity(0, cpus)

        return apply

    def _supervise(self) -> None:
        delay = RESTART_MIN_S
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self._run_once()
            if self._stopping.is_set():
                return
            if time.monotonic() - started > 60:
                delay = RESTART_MIN_S  # it ran fine for a while: this is a new problem
            logger.error(
                "the inference worker exited (code %s); starting it again in %.0f s", code, delay
            )
            self.restarts += 1
            if self._stopping.wait(delay):
                return
            delay = min(delay * 2, RESTART_MAX_S)

    def _run_once(self) -> int | None:
        read_fd, write_fd = os.pipe()
        listen_fd = self._sock.fileno()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "device_agent.serve.worker", str(listen_fd), str(write_fd)],
                stdin=subprocess.PIPE,
                stdout=subprocess.DEVNULL,
                pass_fds=(listen_fd, write_fd),
                # Only setrlimit and sched_setaffinity run between fork and exec.
                preexec_fn=self._preexec(),  # noqa: PLW1509
                start_new_session=True,
            )
        except OSError as exc:
            os.close(read_fd)
            os.close(write_fd)
            logger.error("cannot start the inference worker: %s", exc)
            return None
        finally:
            with contextlib.suppress(OSError):
                os.close(write_fd)
        self._proc = proc
        self._initial = self._desired
        self._write(
            {"op": "load", "id": None, "model": asdict(self._initial)}
            if self._initial is not None
            else {"op": "start"}
        )
        with os.fdopen(read_fd, "r", encoding="utf-8") as replies:
            for line in replies:
                self._on_reply(line)
        self._ready.clear()
        self.serving_sha256 = None
        with self._waiting_lock:
            for event, _ in self._waiting.values():
                event.set()
            self._waiting.clear()
        return proc.wait()

    def _on_reply(self, line: str) -> None:
        try:
            message = json.loads(line)
        except ValueError:
            return
        if message.get("event") == "ready":
            self._ready.set()
            if self._desired is not None and self._desired != self._initial:
                self._send_load(self._desired)  # a deploy came while the worker started
            return
        with self._waiting_lock:
            waiter = self._waiting.pop(message.get("id"), None)
        if waiter is not None:
            waiter[1].append(message)
            waiter[0].set()
            return
        if "sha256" in message or "error" in message:  # the answer to a load nobody waits for
            if message.get("ok"):
                self.serving_sha256 = message["sha256"]
                logger.info(
                    "now serving model %s (%s, loaded in %.0f ms)",
                    message["sha256"][:12],
                    message.get("runtime"),
                    message.get("load_ms", 0.0),
                )
            else:
                logger.error(
                    "the inference worker could not load the model (%s); the previous one, if "
                    "any, is still served",
                    message.get("error"),
                )

    def _write(self, message: dict[str, Any]) -> bool:
        proc = self._proc
        if proc is None or proc.stdin is None or proc.poll() is not None:
            return False
        with self._write_lock:
            try:
                proc.stdin.write((json.dumps(message) + "\n").encode())
                proc.stdin.flush()
            except (OSError, ValueError):
                return False
        return True

    def _send_load(self, model: ServedModel) -> None:
        self._write({"op": "load", "id": None, "model": asdict(model)})

    def _call(self, message: dict[str, Any], timeout: float) -> dict[str, Any] | None:
        if not self._ready.is_set():
            return None
        request_id = next(self._ids)
        event, box = threading.Event(), []
        with self._waiting_lock:
            self._waiting[request_id] = (event, box)
        if not self._write({**message, "id": request_id}) or not event.wait(timeout):
            with self._waiting_lock:
                self._waiting.pop(request_id, None)
            return None
        return box[0] if box else None
