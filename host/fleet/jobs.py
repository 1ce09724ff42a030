"""Job handles: what a caller holds after submitting a command, until its one final answer.

A job ends with exactly one final response (status "ok" or "error"); agents may send it more than
once (outbox re-sends after a reconnect or restart), so the tracker deduplicates by the response's
msg_id and by job id, and a handle delivers its result once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from host.errors import JobFailedError, JobTimeoutError
from shared.errors import ValidationError
from shared.messages import Response
from shared.results import BenchmarkResult, from_data

logger = logging.getLogger(__name__)

# Jobs remembered in memory; beyond this the oldest finished ones are forgotten (the store, when the
# Fleet has one, still refuses a result it has already recorded).
MAX_TRACKED = 10_000

ProgressCallback = Callable[["JobHandle", str, dict[str, Any]], None]


@dataclass
class JobHandle:
    """A submitted job; ``result(timeout)`` blocks for its final response."""

    job_id: str
    device_id: str
    command_msg_id: str
    kind: str
    submitted: float = field(default_factory=time.time)
    stage: str = "submitted"
    stages: list[str] = field(default_factory=list)
    response: Response | None = None
    response_msg_id: str | None = None
    # The command as sent, so it can be sent again (same msg_id) when the device comes back.
    command_topic: str = field(default="", repr=False)
    command_payload: bytes = field(default=b"", repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list[ProgressCallback] = field(default_factory=list, repr=False)

    def on_progress(self, callback: ProgressCallback) -> None:
        """``callback(handle, stage, data)`` for each progress response (and "done" at the end)."""
        self._callbacks.append(callback)

    def _notify(self, stage: str, data: dict[str, Any]) -> None:
        for callback in list(self._callbacks):
            try:
                callback(self, stage, data)
            except Exception:  # a caller's bug must not stop the MQTT thread
                logger.exception("progress callback of job %s failed", self.job_id)

    def _progress(self, data: dict[str, Any]) -> None:
        stage = str(data.get("stage", "progress"))
        self.stage = stage
        self.stages.append(stage)
        self._notify(stage, data)

    def _finish(self, response: Response, response_msg_id: str) -> None:
        self.response = response
        self.response_msg_id = response_msg_id
        self.stage = response.status
        self._done.set()
        self._notify("done", response.data or {})

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Response:
        """The final Response; raises JobTimeoutError when none arrived in ``timeout`` seconds."""
        if not self._done.wait(timeout):
            raise JobTimeoutError(
                f"job {self.job_id} on device {self.device_id} gave no final answer within "
                f"{timeout:.0f} s (last stage: {self.stage}); the device may be offline or busy"
            )
        assert self.response is not None  # set before _done, never an input check
        return self.response

    def result(self, timeout: float | None = None) -> BenchmarkResult:
        """The BenchmarkResult; raises JobFailedError (with the device's code) or JobTimeoutError."""
        response = self.wait(timeout)
        if response.status != "ok":
            error = response.error
            code = error.code if error else "job_failed"
            message = error.message if error else "no error details"
            raise JobFailedError(
                f"job {self.job_id} failed on device {self.device_id}: [{code}] {message}", code
            )
        try:
            return from_data(response.data or {}, BenchmarkResult)
        except ValidationError as exc:
            raise JobFailedError(
                f"job {self.job_id}: device {self.device_id} sent a result that does not follow "
                f"the contract: {exc}",
                "bad_result",
            ) from exc


class JobTracker:
    """Routes responses to handles and decides which final responses are new."""

    def __init__(self) -> None:
        self._by_command: dict[str, JobHandle] = {}
        self._by_job: dict[str, JobHandle] = {}
        self._final_msg_ids: set[str] = set()
        self._final_jobs: set[str] = set()
        self._final_order: deque[tuple[str, str]] = deque()
        self._lock = threading.Lock()

    def add(self, handle: JobHandle) -> None:
        with self._lock:
            self._by_command[handle.command_msg_id] = handle
            self._by_job[handle.job_id] = handle
            if len(self._by_job) > MAX_TRACKED:
                self._forget_oldest_finished()

    def _forget_oldest_finished(self) -> None:
        """Keep memory bounded in a long-running host; the store still dedups old results."""
        finished = [h for h in self._by_job.values() if h.done()]
        for old in finished[: len(finished) // 2]:
            self._by_job.pop(old.job_id, None)
            self._by_command.pop(old.command_msg_id, None)

    def by_command(self, command_msg_id: str | None) -> JobHandle | None:
        if command_msg_id is None:
            return None
        with self._lock:
            return self._by_command.get(command_msg_id)

    def by_job(self, job_id: str) -> JobHandle | None:
        with self._lock:
            return self._by_job.get(job_id)

    def claim_final(self, job_id: str, response_msg_id: str) -> bool:
        """True the first time a final response for this job (or with this msg_id) is seen."""
        with self._lock:
            if job_id in self._final_jobs or response_msg_id in self._final_msg_ids:
                return False
            self._final_jobs.add(job_id)
            self._final_msg_ids.add(response_msg_id)
            self._final_order.append((job_id, response_msg_id))
            while len(self._final_order) > MAX_TRACKED:
                old_job, old_msg = self._final_order.popleft()
                self._final_jobs.discard(old_job)
                self._final_msg_ids.discard(old_msg)
            return True

    def pending(self) -> list[JobHandle]:
        with self._lock:
            return [h for h in self._by_job.values() if not h.done()]
