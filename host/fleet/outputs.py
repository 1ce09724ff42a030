"""Raw eval outputs sent back by boards, kept on disk until a caller scores them.

A benchmark sent with ``return_outputs`` makes the agent publish the outputs of the eval set as
OutputsPart messages (through its outbox, so they survive restarts) before the result that names
them (shared.results.OutputsRef). Each part is written here, then acknowledged; once all parts of a
file are in, they are joined, checked against the sha256, and kept as ``{job_id}.npz``.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import threading
import time
from pathlib import Path

from shared.errors import IntegrityError
from shared.fsutil import atomic_write
from shared.messages import OutputsPart
from shared.results import OutputsRef, join_outputs

logger = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")


class OutputsCollector:
    """Parts in, whole files out; thread-safe (parts arrive on paho's thread)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._cond = threading.Condition()

    def _job_dir(self, job_id: str) -> Path:
        if not _SAFE.match(job_id) or job_id in (".", ".."):
            raise IntegrityError(f"invalid job id {job_id!r} in an outputs part")
        return self.directory / f"{job_id}.parts"

    def path(self, job_id: str) -> Path:
        self._job_dir(job_id)
        return self.directory / f"{job_id}.npz"

    def add(self, part: OutputsPart) -> None:
        """Store one part durably (the caller acknowledges it afterwards)."""
        try:
            data = base64.b64decode(part.data, validate=True)
        except ValueError as exc:
            raise IntegrityError(
                f"outputs part {part.index} of {part.job_id} is not base64"
            ) from exc
        folder = self._job_dir(part.job_id)
        with self._cond:
            if self.path(part.job_id).is_file():
                return  # already joined: a re-sent part
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write(folder / f"{part.sha256}-{part.index}-of-{part.count}", data)
            self._cond.notify_all()

    def _join(self, job_id: str, ref: OutputsRef) -> Path | None:
        """The joined file, once every part of ``ref`` is on disk (call with the lock held)."""
        target = self.path(job_id)
        if target.is_file():
            return target
        folder = self._job_dir(job_id)
        names = [folder / f"{ref.sha256}-{i}-of-{ref.parts}" for i in range(ref.parts)]
        if not all(p.is_file() for p in names):
            return None
        parts = [
            OutputsPart(
                job_id=job_id,
                sha256=ref.sha256,
                index=i,
                count=ref.parts,
                data=base64.b64encode(p.read_bytes()).decode("ascii"),
            )
            for i, p in enumerate(names)
        ]
        atomic_write(target, join_outputs(ref, parts))
        shutil.rmtree(folder, ignore_errors=True)
        return target

    def wait(self, job_id: str, ref: OutputsRef, timeout: float) -> Path | None:
        """The outputs file of a job, waiting up to ``timeout`` s for missing parts; None if they
        did not all come. Raises IntegrityError when the joined parts do not match ``ref``."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                found = self._join(job_id, ref)
                if found is not None:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._cond.wait(min(left, 1.0))

    def discard(self, job_id: str) -> None:
        with self._cond:
            self.path(job_id).unlink(missing_ok=True)
            shutil.rmtree(self._job_dir(job_id), ignore_errors=True)
