"""The disk outbox: final responses survive agent restarts until the host acknowledges them.

paho's outgoing queue lives in memory, so a result published just before a power cut would be
lost. Each final response is written here (atomic write + fsync) before it is published, and is
re-published on every (re)connect and periodically until a ``cmd.ack`` names its msg_id.
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


@dataclass(frozen=True)
class OutboxEntry:
    msg_id: str
    topic: str
    payload: str  # the encoded envelope (JSON text)
    corr_id: str | None
    job_id: str | None
    created: float


class Outbox:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
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
