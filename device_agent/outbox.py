"""The disk outbox: final responses survive agent restarts until the host acknowledges them.

paho's outgoing queue lives in memory, so a result published just before a power cut would be
lost. Each final response is written here (atomic write + fsync) before it is published, and is
re-published on every (re)connect and periodically until a ``cmd.ack`` names its msg_id (or names
it as unknown: the host has no record of its command, so nobody will ever store it).

The payload is the envelope unsigned: the agent signs it each time it publishes it, so every copy on
the wire is fresh. The outbox is bounded: an entry older than ``ttl_s`` (7 days by default), and the
oldest entries past ``max_entries`` or ``max_bytes``, are dropped with a log line, so responses no
host acknowledges cannot fill the disk or be re-sent for ever.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.fsutil import atomic_write, fsync_dir
from shared.messages import MSG_ID_PATTERN

logger = logging.getLogger(__name__)

DEFAULT_TTL_S = 7 * 24 * 3600.0
DEFAULT_MAX_ENTRIES = 2048
DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class OutboxEntry:
    msg_id: str
    topic: str
    payload: str  # the encoded envelope (JSON text)
    corr_id: str | None
    job_id: str | None
    created: float


class Outbox:
    def __init__(
        self,
        directory: Path,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ttl_s = ttl_s
        self.max_entries = max(1, max_entries)
        self.max_bytes = max(1, max_bytes)
        self._lock = threading.Lock()

    def _path(self, msg_id: str) -> Path:
        if not MSG_ID_PATTERN.match(msg_id) or msg_id in (".", ".."):
            raise ValueError(f"invalid msg_id {msg_id!r}")
        return self.directory / f"{msg_id}.json"

    def put(
        self, msg_id: str, topic: str, payload: bytes, *, corr_id: str | None, job_id: str | None
    ) -> OutboxEntry:
        entry = OutboxEntry(msg_id, topic, payload.decode("utf-8"), corr_id, job_id, time.time())
        with self._lock:
            atomic_write(self._path(msg_id), json.dumps(asdict(entry)).encode("utf-8"))
        self.prune(keep=msg_id)
        return entry

    def get(self, msg_id: str) -> OutboxEntry | None:
        try:
            path = self._path(msg_id)
        except ValueError:
            return None
        try:
            return OutboxEntry(**json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("unreadable outbox entry %s: %s", path.name, exc)
            return None

    def remove(self, msg_id: str) -> bool:
        try:
            path = self._path(msg_id)
        except ValueError:
            return False
        with self._lock:
            try:
                path.unlink()
            except FileNotFoundError:
                return False
            fsync_dir(self.directory)
        return True

    def entries(self) -> list[OutboxEntry]:
        found = []
        for path in sorted(self.directory.glob("*.json")):
            entry = self.get(path.stem)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.created)

    def prune(self, *, keep: str | None = None, now: float | None = None) -> list[OutboxEntry]:
        """Drop entries past the time to live, then the oldest past the size caps (never ``keep``,
        the entry just written); returns what was dropped."""
        now = time.time() if now is None else now
        entries = self.entries()
        dropped: list[tuple[OutboxEntry, str]] = []
        kept: list[OutboxEntry] = []
        for entry in entries:
            if entry.msg_id != keep and now - entry.created > self.ttl_s:
                dropped.append((entry, f"older than {self.ttl_s / 3600:.0f} h"))
            else:
                kept.append(entry)
        total = sum(len(e.payload) for e in kept)
        while kept and (len(kept) > self.max_entries or total > self.max_bytes):
            oldest = next((e for e in kept if e.msg_id != keep), None)
            if oldest is None:
                break
            kept.remove(oldest)
            total -= len(oldest.payload)
            dropped.append(
                (oldest, f"over the cap of {self.max_entries} entries or {self.max_bytes} bytes")
            )
        for entry, why in dropped:
            if self.remove(entry.msg_id):
                logger.warning(
                    "outbox: dropped unacknowledged response %s (job %s, command %s): %s",
                    entry.msg_id,
                    entry.job_id,
                    entry.corr_id,
                    why,
                )
        return [entry for entry, _ in dropped]
