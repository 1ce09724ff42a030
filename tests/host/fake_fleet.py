"""A scripted fleet for fast unit tests of the deployment driver (the driver is under test, not
the MQTT side): devices go online and offline when the test says, and the real command pipeline
(host.commands.CommandDriver) publishes the recorded commands through it at once, synchronously.
Every published command is recorded, and a device answers it the way the test scripts it; the
answer goes back through the command driver exactly as host.fleet hands it one from MQTT."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from host.artifacts import manifest_for_file
from host.commands.driver import CommandDriver, _Incoming
from host.commands.keys import HostKeys, make_key
from host.fleet.devices import DeviceRegistry
from host.store import Store
from shared.manifest import ArtifactManifest
from shared.messages import DeployCmd, ErrorInfo, Message, Response, RollbackCmd, decode, new_msg_id
from shared.results import DeployResult, to_data
from tests.host.fleet_helpers import sample_birth

# (status, data, error_code) the device answers, or None: no answer (yet)
Reply = tuple[str, dict[str, Any] | None, str | None]
Answer = Callable[[str, Message], Reply | None]


@dataclass
class Published:
    device_id: str
    name: str
    message: Message


class _Commands(CommandDriver):
    """The real driver, pumped at once whenever it would be woken (no threads)."""

    fake: FakeFleet

    def wake(self) -> None:
        self.fake.pump()

    def device_online(self, device_id: str) -> None:
        self._rescan.set()
        self.fake.pump()


@dataclass
class FakeFleet:
    store: Store
    chunk_size: int = 128 * 1024
    registry: DeviceRegistry = field(default_factory=DeviceRegistry)
    published: list[Published] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)
    # device -> answer(name, message) -> (status, data, error_code) or None (no answer yet)
    answers: dict[str, Answer] = field(default_factory=dict)
    active: dict[str, str | None] = field(default_factory=dict)
    connected: bool = True
    key_dir: Path | None = None
    _replies: list[_Incoming] = field(default_factory=list)
    _pumping: bool = False
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.commands = self._driver()

    def _driver(self) -> _Commands:
        if self.key_dir is None:
            import tempfile

            self.key_dir = Path(tempfile.mkdtemp(prefix="fake-fleet-keys-"))
            make_key(self.key_dir / "signing.key")
        driver = _Commands(self.store, self, HostKeys(self.key_dir / "signing.key"))
        driver.fake = self
        return driver

    def restart(self) -> None:
        """A new host process: its command driver remembers nothing it published."""
        self.commands = self._driver()

    # -- devices ---------------------------------------------------------------------------------
    def online(self, device_id: str) -> None:
        self.registry.set_birth(device_id, sample_birth())
        self.registry.set_status(device_id, True)
        self.commands.device_online(device_id)

    def offline(self, device_id: str) -> None:
        self.registry.set_status(device_id, False)

    def offer(
        self, path: Any, manifest: ArtifactManifest | None = None, *, verify: bool = True
    ) -> ArtifactManifest:
        self.offered.append(str(path))
        return manifest or manifest_for_file(Path(path))

    def expect_artifact(self, sha256: str, device_id: str) -> None:
        pass

    # -- the command driver's side ---------------------------------------------------------------
    def pump(self) -> None:
        """Publish what is due, and hand the devices' answers back, until nothing moves (one
        thread at a time: a campaign measures devices from a thread each)."""
        with self._lock:
            if self._pumping:
                return
            self._pumping = True
            try:
                self.commands._publish_due(pending_only=False, settle=False)
                while self._replies:
                    batch, self._replies = self._replies, []
                    self.commands.handle(batch)
            finally:
                self._pumping = False

    def publish_command(self, device_id: str, name: str, payload: bytes) -> None:
        message = decode(payload)
        self.published.append(Published(device_id, name, message))
        record = self.registry.get(device_id)
        if name == "ack" or record is None or not record.online:
            return  # lost, as a broker loses a command to an absent client
        reply = self.answers.get(device_id, self.commit)(name, message)
        if reply is not None:
            self.reply(message, reply)

    def reply(self, command: Message, reply: Reply) -> None:
        """The device's final answer to ``command``, as the Fleet hands it to the driver."""
        status, data, error_code = reply
        error = ErrorInfo(code=error_code, message=error_code) if error_code else None
        body = Response(status=status, data=data, error=error)  # type: ignore[arg-type]
        message = Message(
            schema="resp", msg_id=new_msg_id(), ts=0.0, body=body, corr_id=command.msg_id,
            device_id=command.device_id,
        )  # fmt: skip
        with self._lock:
            self._replies.append(_Incoming(command.device_id or "", message))
            if not self._pumping:
                self.pump()

    # -- scripted behaviours ---------------------------------------------------------------------
    def commit(self, name: str, message: Message) -> Reply:
        """What a healthy agent does: a deploy commits, a rollback restores the previous model."""
        body = message.body
        device = message.device_id or ""
        if isinstance(body, DeployCmd):
            previous, self.active[device] = self.active.get(device), body.model.sha256
            result = DeployResult(
                deploy_id=body.deploy_id, outcome="committed", active_sha256=body.model.sha256,
                previous_sha256=previous,
            )  # fmt: skip
            return "ok", to_data(result), None
        if not isinstance(body, RollbackCmd):
            return "ok", {}, None
        result = DeployResult(
            deploy_id=body.deploy_id, outcome="restored", active_sha256=None, previous_sha256=None
        )
        return "ok", to_data(result), None

    @staticmethod
    def fail_health(name: str, message: Message) -> Reply:
        body = message.body
        if not isinstance(body, DeployCmd):
            return "ok", {}, None
        result = DeployResult(
            deploy_id=body.deploy_id, outcome="rolled_back", active_sha256=None, previous_sha256=None,
            detail="health check failed: p90 above the budget",
        )  # fmt: skip
        return "error", to_data(result), "health_check_failed"

    @staticmethod
    def silent(name: str, message: Message) -> None:
        return None

    def deploys_to(self, device_id: str) -> list[DeployCmd]:
        return [
            p.message.body
            for p in self.published
            if p.device_id == device_id and isinstance(p.message.body, DeployCmd)
        ]

    def msg_ids_to(self, device_id: str, name: str = "deploy") -> list[str]:
        return [
            p.message.msg_id for p in self.published if p.device_id == device_id and p.name == name
        ]


def builtins(obj: Any) -> Any:
    return msgspec.to_builtins(obj)
