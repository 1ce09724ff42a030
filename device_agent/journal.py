"""The command journal: which command ids this device has seen, so a command runs at most once.

One small JSON file per command id under ``data-dir/journal``. A benchmark command is journaled as
"pending" with its raw payload before it is queued, so a job interrupted by a restart is queued
again; it becomes "done" with the msg_id of its final response once that response is in the outbox.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from shared.fsutil import atomic_write
from shared.messages import MSG_ID_PATTERN

logger = logging.getLogger(__name__)

PENDING = "pending"
DONE = "done"
# Done entries older than this are forgotten; a host re-sending a week-old command is not expected.
RETENTION_S = 7 * 24 * 3600


@dataclass
class JournalEntry:
    cmd_id: str
    schema: str
    state: str
    job_id: str | None = None
    response_msg_id: str | None = None
    command: str | None = None  # raw envelope of a pending job, to re-queue it after a restart
    updated: float = 0.0


class Journal:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def _path(self, cmd_id: str) -> Path:
        if not MSG_ID_PATTERN.match(cmd_id) or cmd_id in (".", ".."):
            raise ValueError(f"invalid command id {cmd_id!r}")
        return self.directory / f"{cmd_id}.json"

    def get(self, cmd_id: str) -> JournalEntry | None:
        path = self._path(cmd_id)
        try:
            return JournalEntry(**json.loads(path.read_text("utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("unreadable journal entry %s: %s", path.name, exc)
            return None

    def put(self, entry: JournalEntry) -> None:
        entry.updated = time.time()
        with self._lock:
            atomic_write(self._path(entry.cmd_id), json.dumps(asdict(entry)).encode("utf-8"))

    def mark_done(self, cmd_id: str, response_msg_id: str) -> None:
        entry = self.get(cmd_id)
        if entry is None:
            return
        entry.state = DONE
        entry.response_msg_id = response_msg_id
        entry.command = None
        self.put(entry)

    def entries(self) -> list[JournalEntry]:
        found = []
        for path in self.directory.glob("*.json"):
            entry = self.get(path.stem)
            if entry is not None:
                found.append(entry)
        return sorted(found, key=lambda e: e.updated)

    def prune(self, keep: set[str]) -> None:
        """Forget done entries past the retention time, except those whose response is unacked."""
        cutoff = time.time() - RETENTION_S
        for entry in self.entries():
            if entry.state == DONE and entry.updated < cutoff and entry.response_msg_id not in keep:
                self._path(entry.cmd_id).unlink(missing_ok=True)
