"""Every board measurement a search makes goes through :class:`BoardMeter` -- one small class on
today's host-to-board path (``Fleet.submit_benchmark`` and the job's stored result), so that the
rest of host.search never touches MQTT and the path can be rewired here alone."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from host.errors import DeviceUnavailableError, HostError, JobFailedError, JobTimeoutError
from shared.errors import ConfigError, EdgeTailorError, ValidationError
from shared.results import BenchmarkResult, from_data

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

logger = logging.getLogger(__name__)

# On top of the benchmark's own timeout: the transfer, the worker start, the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
POLL_S = 0.5
SUFFIX_OF_RUNTIME = {"tflite": ".tflite", "onnx": ".onnx"}


class MeasureError(HostError):
    """A board could not measure a file (offline, the job failed or never answered)."""


class BoardMeter:
    """Benchmarks a file on one board with a thread count and a runtime; blocks until the result."""

    def __init__(
        self,
        fleet: Fleet,
        store: Store,
        *,
        eval_path: Path | None,
        task: str | None,
        runs: int = 30,
        min_s: float = 0.5,
        timeout_s: float = 300.0,
        device_wait_s: float = 120.0,
    ) -> None:
        self.fleet = fleet
        self.store = store
        self.eval_path = eval_path
        self.task = task
        self.runs = runs
        self.min_s = min_s
        self.timeout_s = timeout_s
        self.device_wait_s = device_wait_s

    def measure(
        self,
        artifact: str | Path,
        device: str,
        threads: int | None,
        runtime: str,
        *,
        adopt: str | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> BenchmarkResult:
        """The board's result; ``adopt`` is a job sent earlier (by a worker that died) whose
        answer is awaited before anything is sent again; ``on_sent(job_id)`` runs once the
        command is out, so the claim can record it."""
        path = Path(artifact)
        if SUFFIX_OF_RUNTIME.get(runtime) != path.suffix:
            raise ConfigError(
                f"{path.name} is not a {runtime} file; the board runs files by format"
            )
        if adopt is not None:
            self.fleet.offer(path)
            if self.eval_path is not None:
                self.fleet.offer(self.eval_path)
            adopted = self._await_stored(adopt)
            if adopted is not None:
                return adopted
        if self.fleet.registry.wait_for(device, self.device_wait_s) is None:
            raise MeasureError(f"{device} stayed offline for {self.device_wait_s:.0f} s")
        try:
            handle = self.fleet.submit_benchmark(
                device,
                path,
                eval_path=self.eval_path,
                threads=threads,
                runs=self.runs,
                min_s=self.min_s,
                timeout_s=self.timeout_s,
                task=self.task,
                device_timeout_s=10.0,
            )
        except DeviceUnavailableError as exc:
            raise MeasureError(str(exc)) from exc
        if on_sent is not None:
            on_sent(handle.job_id)
        deadline = time.monotonic() + self.timeout_s + TRANSFER_ALLOWANCE_S
        while True:
            try:
                return handle.result(timeout=4 * POLL_S)
            except JobTimeoutError:
                pass
            except (JobFailedError, EdgeTailorError) as exc:
                raise MeasureError(f"{device}: {exc}") from exc
            # Beside other replicas (a shared subscription), another one may have received and
            # stored the answer: the database has it then, this process's handle never will.
            stored = self.store.get_result(handle.job_id)
            if stored is not None:
                if stored.status != "ok":
                    raise MeasureError(
                        f"{device}: [{stored.error_code}] {stored.error_message or 'failed'}"
                    )
                try:
                    return from_data(stored.data or {}, BenchmarkResult)
                except ValidationError as exc:
                    raise MeasureError(f"{device}: a stored result is malformed: {exc}") from exc
            if time.monotonic() > deadline:
                raise MeasureError(
                    f"{device}: no answer to job {handle.job_id} within "
                    f"{self.timeout_s + TRANSFER_ALLOWANCE_S:.0f} s"
                )

    def _await_stored(self, job_id: str) -> BenchmarkResult | None:
        """The stored result of a job sent before (the agent re-sends it until acknowledged)."""
        deadline = time.monotonic() + self.timeout_s + TRANSFER_ALLOWANCE_S
        while time.monotonic() < deadline:
            stored = self.store.get_result(job_id)
            if stored is not None:
                if stored.status != "ok":
                    return None
                try:
                    return from_data(stored.data or {}, BenchmarkResult)
                except ValidationError:
                    return None
            job = self.store.get_job(job_id)
            if job is None:
                return None
            time.sleep(POLL_S)
        return None


__all__ = ["BoardMeter", "MeasureError"]
