"""Every board measurement a search makes goes through :class:`BoardMeter` -- one small class on
the host's command pipeline (host.commands.bench: a recorded, signed benchmark command and its
stored result), so that the rest of host.search never touches MQTT."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from host.commands.bench import (
    TRANSFER_ALLOWANCE_S,
    poll_benchmark,
    submit_benchmark,
    wait_benchmark,
)
from host.errors import HostError, JobFailedError, JobTimeoutError
from shared.errors import ConfigError, EdgeTailorError
from shared.results import BenchmarkResult

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

logger = logging.getLogger(__name__)

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
            adopted = self._adopted(adopt)
            if adopted is not None:
                return adopted
        if self.fleet.registry.wait_for(device, self.device_wait_s) is None:
            raise MeasureError(f"{device} stayed offline for {self.device_wait_s:.0f} s")
        try:
            command_id = submit_benchmark(
                self.fleet, device, path, eval_path=self.eval_path, threads=threads,
                runs=self.runs, min_s=self.min_s, timeout_s=self.timeout_s, task=self.task,
            )  # fmt: skip
        except EdgeTailorError as exc:
            raise MeasureError(f"{device}: {exc}") from exc
        if on_sent is not None:
            on_sent(command_id)
        try:
            # The result is read from the database: whichever replica received the answer.
            return wait_benchmark(self.fleet, command_id, self.timeout_s + TRANSFER_ALLOWANCE_S)
        except JobTimeoutError as exc:
            self.fleet.commands.cancel(command_id)
            raise MeasureError(f"{device}: {exc}") from exc
        except (JobFailedError, EdgeTailorError) as exc:
            raise MeasureError(f"{device}: {exc}") from exc

    def _adopted(self, command_id: str) -> BenchmarkResult | None:
        """The result of a benchmark a worker that died had sent: awaited while its command is
        open (the agent keeps the answer until acknowledged), None when it failed or is unknown."""
        try:
            done = poll_benchmark(self.fleet, command_id)
            if done is not None:
                return done
            return wait_benchmark(self.fleet, command_id, self.timeout_s + TRANSFER_ALLOWANCE_S)
        except (JobFailedError, JobTimeoutError, ConfigError) as exc:
            logger.info("benchmark %s of a worker that died is not adopted: %s", command_id, exc)
            return None


__all__ = ["BoardMeter", "MeasureError"]
