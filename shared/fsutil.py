"""Crash-safe file writes, used by host and agent: a reader sees the old or the new content, never half."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Write ``data`` to a temporary sibling, fsync it, rename over ``path``, fsync the directory.

    The file is created with ``mode`` from the start (0o600 for private keys: never readable by
    others, not even for a moment).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)  # the umask may have narrowed it
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # on a full disk, a half-written file would only take space
        raise
    os.replace(tmp, path)
    fsync_dir(path.parent)
