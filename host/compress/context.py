"""What a technique handler sees besides the model: data, the original model, export settings, a log.

Handlers return a new :class:`~host.models.ModelBundle` and never mutate the one they receive (Olive
style), so a caller can keep the incoming model as a teacher or a baseline. Quantization steps only
record how the exporter should write the model (``ctx.precision``); QAT additionally leaves the trained
fake-quant graph in ``ctx.quantizer_state`` for the exporter to finish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from host.data import DataSet
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

# progress(label, fraction_done in [0, 1]); the same shape host.train.fit reports with.
ProgressFn = Callable[[str, float], None]


@dataclass
class StepRecord:
    """What one step did, in numbers and in words (shown by the CLI and stored with the result)."""

    technique: str
    params_before: int | None = None
    params_after: int | None = None
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "technique": self.technique,
            "params_before": self.params_before,
            "params_after": self.params_after,
            "seconds": round(self.seconds, 3),
            "notes": list(self.notes),
            "details": dict(self.details),
        }


@dataclass
class CompressContext:
    """Mutable state threaded through the steps of one recipe."""

    data: DataSet
    teacher: ModelBundle
    precision: str = "fp32"
    calibration_samples: int = 256
    # Mixed-precision int8: module names the exporter leaves in float.
    float_layers: tuple[str, ...] = ()
    quantizer_state: Any = None
    # Set by unstructured pruning: later retraining keeps the zeroed weights at zero.
    sparse: bool = False
    progress: ProgressFn | None = None
    seed: int = 0
    log: list[StepRecord] = field(default_factory=list)
    _current: StepRecord | None = None

    def note(self, message: str, *args: object) -> None:
        """Record a sentence about the current step (and log it)."""
        text = message % args if args else message
        logger.info("%s", text)
        if self._current is not None:
            self._current.notes.append(text)

    def detail(self, key: str, value: Any) -> None:
        if self._current is not None:
            self._current.details[key] = value

    def report(self, label: str, fraction: float) -> None:
        if self.progress is not None:
            self.progress(label, max(0.0, min(1.0, fraction)))

    def begin(self, technique: str, params_before: int | None) -> StepRecord:
        record = StepRecord(technique=technique, params_before=params_before)
        record.details["_started"] = time.perf_counter()
        self._current = record
        return record

    def end(self, params_after: int | None) -> StepRecord:
        record = self._current
        if record is None:
            raise RuntimeError("end() without begin()")
        started = record.details.pop("_started")
        record.seconds = time.perf_counter() - started
        record.params_after = params_after
        self.log.append(record)
        self._current = None
        return record
