"""A scripted fleet for fast unit tests of the deployment driver (the driver is under test, not
the fleet): devices go online and offline when the test says, every published command is
recorded, and a device answers a command the way the test scripts it, by storing the final
response exactly as host.fleet does when one arrives over MQTT."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from host.artifacts import manifest_for_file
from host.fleet.devices import DeviceRegistry
from host.store import Store
from shared.manifest import ArtifactManifest
from shared.messages import DeployCmd, Message, RollbackCmd, decode, new_msg_id
from shared.results import DeployResult, to_data
from tests.host.fleet_helpers import sample_birth

Answer = Callable[[str, Message], tuple[str, dict[str, Any] | None, str | None] | None]


@dataclass
class Published:
    device_id: str
    name: str
    message: Message


@dataclass
class FakeFleet:
    store: Store
    signing_key: Any = None
    chunk_size: int = 128 * 1024
    registry: DeviceRegistry = field(default_factory=DeviceRegistry)
    published: list[Published] = field(default_factory=list)
    offered: list[str] = field(default_factory=list)
    # device -> answer(name, message) -> (status, data, error_code) or None (no answer yet)
    answers: dict[str, Answer] = field(default_factory=dict)
    active: dict[str, str | None] = field(default_factory=dict)

    def online(self, device_id: str) -> None:
        self.registry.set_birth(device_id, sample_birth())
        self.registry.set_status(device_id, True)

    def offline(self, device_id: str) -> None:
        self.registry.set_status(device_id, False)

    def offer(
        self, path: Any, manifest: ArtifactManifest | None = None, *, verify: bool = True
    ) -> ArtifactManifest:
        self.offered.append(str(path))
        return manifest or manifest_for_file(Path(path))

    def publish_command(self, device_id: str, name: str, payload: bytes) -> None:
        message = decode(payload)
        self.published.append(Published(device_id, name, message))
        if not self.registry.get(device_id) or not self.registry.get(device_id).online:
            return  # lost, as a broker loses a command to an absent client
        answer = self.answers.get(device_id, self.commit)
        reply = answer(name, message)
        if reply is None:
            return
        status, data, error_code = reply
        job = self.store.find_job_by_command(message.msg_id)
        assert job is not None, "the driver publishes only commands it recorded"
        self.store.record_result(
            job_id=job.job_id, response_msg_id=new_msg_id(), device_id=device_id, status=status,
            data=data, error_code=error_code, error_message=error_code,
        )  # fmt: skip

    # -- scripted behaviours ---------------------------------------------------------------------
    def commit(self, name: str, message: Message) -> tuple[str, dict[str, Any], None]:
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
        assert isinstance(body, RollbackCmd)
        result = DeployResult(
            deploy_id=body.deploy_id, outcome="restored", active_sha256=None, previous_sha256=None
        )
        return "ok", to_data(result), None

    @staticmethod
    def fail_health(name: str, message: Message) -> tuple[str, dict[str, Any], str]:
        body = message.body
        assert isinstance(body, DeployCmd)
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
