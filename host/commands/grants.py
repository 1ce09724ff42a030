"""Chunks only for commands: which device may fetch which artifact, and how often each chunk.

The host serves chunks of artifact S to device D only while a recorded, open, unexpired command
for D names S (its model or its eval data). The command driver grants S to D when it publishes
such a command and revokes the grant when the command ends; a request for which this process has
no grant looks the command up in the database (another replica may have published it), and a
miss is remembered for a moment, so a flood of requests costs one query per artifact and device.

Per grant, each chunk index is published for the device at most ``max_sends`` times: a device
that lost chunks asks again and gets them, a device that asks for the same chunks over and over
cannot make the host publish the artifact over and over. Only publications the device's request
caused count (:meth:`ChunkGate.charge`): asking again for a chunk already on its way (the chunk
server coalesces it) costs nothing.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from shared.messages import ChunkRequest

DEFAULT_MAX_SENDS = 8  # sends of one chunk index to one device, per command
MISS_CACHE_S = 2.0  # a request with no command behind it is not looked up again this soon
MAX_MISSES = 10_000  # misses remembered at most (memory stays bounded under a flood)

# (device_id, sha256) -> (command id, expiry) of an open command naming it, or None.
Lookup = Callable[[str, str], "tuple[str, float | None] | None"]


@dataclass
class Grant:
    command_id: str
    expires_at: float | None
    sends: dict[tuple[int, int], int] = field(default_factory=dict)  # (chunk size, index) -> n


class ChunkGate:
    """Thread-safe: grants come from the driver's thread, requests on paho's network thread."""

    def __init__(
        self,
        lookup: Lookup | None = None,
        *,
        max_sends: int = DEFAULT_MAX_SENDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._lookup = lookup
        self.max_sends = max(1, max_sends)
        self._clock = clock
        self._grants: dict[tuple[str, str], Grant] = {}
        self._by_command: dict[str, set[tuple[str, str]]] = {}
        self._misses: dict[tuple[str, str], float] = {}
        self._lock = threading.Lock()

    def grant(self, device_id: str, sha256: str, command_id: str, expires_at: float | None) -> None:
        """``command_id`` (published to ``device_id``) names ``sha256``."""
        key = (device_id, sha256)
        with self._lock:
            current = self._grants.get(key)
            if current is not None and current.command_id == command_id:
                current.expires_at = expires_at
                return
            self._grants[key] = Grant(command_id, expires_at)
            self._by_command.setdefault(command_id, set()).add(key)
            self._misses.pop(key, None)

    def revoke(self, command_ids: Iterable[str]) -> None:
        """These commands ended: their devices may fetch nothing more for them."""
        with self._lock:
            for command_id in command_ids:
                for key in self._by_command.pop(command_id, ()):
                    grant = self._grants.get(key)
                    if grant is not None and grant.command_id == command_id:
                        del self._grants[key]

    def _find(self, device_id: str, sha256: str, now: float) -> Grant | None:
        key = (device_id, sha256)
        with self._lock:
            grant = self._grants.get(key)
            if grant is not None and (grant.expires_at is None or grant.expires_at > now):
                return grant
            if grant is not None:
                del self._grants[key]
            missed = self._misses.get(key)
            if self._lookup is None or (missed is not None and now - missed < MISS_CACHE_S):
                return None
        found = self._lookup(device_id, sha256)
        with self._lock:
            if found is None:
                if len(self._misses) >= MAX_MISSES:
                    self._misses.clear()
                self._misses[key] = now
                return None
            command_id, expires_at = found
            grant = self._grants.get(key)
            if grant is None or grant.command_id != command_id:
                grant = Grant(command_id, expires_at)
                self._grants[key] = grant
                self._by_command.setdefault(command_id, set()).add(key)
            return grant

    def admit(self, device_id: str, request: ChunkRequest) -> tuple[list[int], str | None]:
        """The indices of ``request`` this device may be sent now, and why none may (or None)."""
        now = self._clock()
        grant = self._find(device_id, request.sha256, now)
        if grant is None:
            return [], "no_command"
        with self._lock:
            allowed = [
                index
                for index in dict.fromkeys(request.indices)
                if grant.sends.get((request.chunk_size, index), 0) < self.max_sends
            ]
        return allowed, None if allowed else "chunk_limit"

    def charge(self, device_id: str, sha256: str, chunk_size: int, published: list[int]) -> None:
        """The chunk server publishes these indices because this device asked for them."""
        with self._lock:
            grant = self._grants.get((device_id, sha256))
            if grant is None:
                return
            for index in published:
                key = (chunk_size, index)
                grant.sends[key] = grant.sends.get(key, 0) + 1

    def granted(self, device_id: str, sha256: str) -> str | None:
        """The command behind this device's grant of this artifact (tests, diagnostics)."""
        with self._lock:
            grant = self._grants.get((device_id, sha256))
            return grant.command_id if grant is not None else None


__all__ = ["DEFAULT_MAX_SENDS", "ChunkGate", "Grant"]
