"""The host's view of its devices, built from retained birth/status messages and telemetry."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, replace
from typing import Any

import msgspec

from shared.messages import Birth, Telemetry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeviceRecord:
    """One device as last heard: ``online`` follows the retained status (the Will says offline)."""

    device_id: str
    online: bool = False
    birth: Birth | None = None
    telemetry: Telemetry | None = None
    last_seen: float | None = None
    last_telemetry_at: float | None = None
    # When the device last came online: a command published before that may have been lost.
    online_since: float | None = None

    def runtimes(self) -> list[str]:
        return [f"{r.name} {r.version}" for r in self.birth.runtimes] if self.birth else []

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary used by `edgetailor devices --json` and the API."""
        birth = self.birth
        return {
            "device_id": self.device_id,
            "online": self.online,
            "arch": birth.arch if birth else None,
            "cpu_model": birth.cpu_model if birth else None,
            "cores": birth.cores if birth else None,
            "ram_mb": birth.ram_mb if birth else None,
            "os": birth.os if birth else None,
            "agent_version": birth.agent_version if birth else None,
            "runtimes": msgspec.to_builtins(birth.runtimes) if birth else [],
            "delegates": list(birth.delegates) if birth else [],
            "tags": dict(birth.tags) if birth else {},
            "last_seen": self.last_seen,
            "last_telemetry_at": self.last_telemetry_at,
            "telemetry": msgspec.to_builtins(self.telemetry) if self.telemetry else None,
        }


class DeviceRegistry:
    """Thread-safe map of device id -> DeviceRecord, with waiters for "device comes online"."""

    def __init__(self) -> None:
        self._records: dict[str, DeviceRecord] = {}
        self._changed = threading.Condition()

    def _update(self, device_id: str, **changes: Any) -> DeviceRecord:
        with self._changed:
            current = self._records.get(device_id, DeviceRecord(device_id))
            now = time.time()
            if changes.get("online") is True and not current.online:
                changes["online_since"] = now
            elif changes.get("online") is False:
                changes["online_since"] = None
            record = replace(current, last_seen=now, **changes)
            self._records[device_id] = record
            self._changed.notify_all()
            return record

    def set_status(self, device_id: str, online: bool) -> DeviceRecord:
        return self._update(device_id, online=online)

    def set_birth(self, device_id: str, birth: Birth) -> DeviceRecord:
        return self._update(device_id, birth=birth)

    def set_telemetry(self, device_id: str, telemetry: Telemetry) -> DeviceRecord:
        # Telemetry only flows from a connected agent, so it is proof of life too.
        return self._update(
            device_id, telemetry=telemetry, online=True, last_telemetry_at=time.time()
        )

    def get(self, device_id: str) -> DeviceRecord | None:
        with self._changed:
            return self._records.get(device_id)

    def snapshot(self) -> dict[str, DeviceRecord]:
        with self._changed:
            return dict(self._records)

    def wait_for(
        self, device_id: str, timeout: float, *, need_birth: bool = True
    ) -> DeviceRecord | None:
        """The record once the device is online (and has announced itself), or None on timeout."""
        deadline = time.monotonic() + timeout

        def ready() -> bool:
            record = self._records.get(device_id)
            return bool(record and record.online and (record.birth or not need_birth))

        with self._changed:
            while not ready():
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._records[device_id]
