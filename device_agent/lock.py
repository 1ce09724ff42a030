"""An exclusive lock on the data dir: two agents sharing one journal, outbox and ``active`` link
would answer each other's commands and corrupt each other's state without a word.

The lock is ``flock`` on ``DATA_DIR/agent.lock``, held for the life of the process: the kernel
drops it when the process dies however it dies, so a stale lock never blocks a restart. The file
holds the pid of the holder, to name it in the error.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from shared.errors import EdgeTailorError

LOCK_NAME = "agent.lock"


class DataDirInUseError(EdgeTailorError):
    """Another agent process holds the lock on this data dir."""


class DataDirLock:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> DataDirLock:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = self.holder(fd)
            os.close(fd)
            who = f"another agent (pid {holder})" if holder else "another agent"
            raise DataDirInUseError(
                f"data dir {self.path.parent} is in use by {who}; give each agent its own "
                "--data-dir, or stop the other one first"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def holder(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def held_by_other(self) -> int | None:
        """The pid holding the lock, without taking it (0 when the holder is unknown); else None."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return self.holder(fd) or 0
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
