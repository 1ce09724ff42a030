"""The fleet-learned predictor: p90 latency and peak memory of a file on a board class, with an
interval, from every stored result.

Gradient boosting (scikit-learn's ``HistGradientBoostingRegressor``) with quantile losses at 10%,
50% and 90%: the median is the prediction, the outer two its 80% interval. Latency is learnt as
``log(p90 ms) - log(1 + MACs)``, the log time per multiply-accumulate, which varies far less
across models than the latency itself (trees cannot extrapolate past the MACs they saw, a time
per MAC they need not). Memory is learnt as ``log(peak RSS MB)``.

Its error is tracked per board class on held-out results: every fit also runs a K-fold split
(results assigned to folds by a hash of their job id, so the split is stable as results arrive),
predicts each fold from the others, and keeps the relative errors of those held-out predictions.

The latency interval is **calibrated on those held-out results** (split conformal, as conformalized
quantile regression does it): per board class, each held-out result's nonconformity is how far the
measured figure lies outside its predicted 10%-90% interval (negative inside), in the log target;
the interval a prediction states is the quantile interval widened on both sides by the
``ceil((n + 1) * 0.8) / n`` quantile of the class's n nonconformities, so that about 80% of new
results of the class fall inside it. The coverage a class reports is measured the same way, each
fold's results against a widening computed from the other folds' results only.
A board class with fewer than ``MIN_CLASS_ROWS`` results is *unknown*: no prediction is made for
it, and the search measures such a board fully.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from typing import Any

from host.search.predictor.features import BoardClass, feature_names

logger = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
COVERAGE = round(QUANTILES[2] - QUANTILES[0], 6)  # what the stated interval is calibrated to hold
MIN_CLASS_ROWS = 4
MIN_ROWS = 8
FOLDS = 5


@dataclass(frozen=True)
class TrainingRow:
    """One stored result as the predictor learns from it."""

    x: list[float]
    board: BoardClass
    p90_ms: float
    peak_rss_mb: float
    macs: float
    job_id: str
    device: str
    sha256: str


@dataclass(frozen=True)
class Prediction:
    """What the predictor expects of a file on a board; ``known`` False: it cannot tell."""

    known: bool
    board_class: str
    latency_p90_ms: float | None = None
    latency_interval: tuple[float, float] | None = None
    peak_rss_mb: float | None = None
    memory_interval: tuple[float, float] | None = None
    class_rows: int = 0
    class_error: dict[str, Any] | None = None
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "known": self.known,
            "board_class": self.board_class,
            "latency_p90_ms": self.latency_p90_ms,
            "latency_interval": list(self.latency_interval) if self.latency_interval else None,
            "peak_rss_mb": self.peak_rss_mb,
            "memory_interval": list(self.memory_interval) if self.memory_interval else None,
            "class_rows": self.class_rows,
            "class_error": self.class_error,
            "reason": self.reason,
        }


@dataclass
class ClassError:
    """Relative errors of held-out latency predictions on one board class."""

    board: BoardClass
    errors: list[float] = field(default_factory=list)
    raw_covered: int = 0  # held-out results inside the uncalibrated quantile interval
    covered: int = 0  # held-out results inside the calibrated interval (other folds' widening)
    # (fold, nonconformity in the log target) of each held-out result
    scores: list[tuple[int, float]] = field(default_factory=list)
    widening: float = 0.0  # in the log target, from every held-out result of the class

    def summary(self) -> dict[str, Any]:
        n = len(self.errors)
        return {
            "board_class": self.board.key,
            "describe": self.board.describe(),
            "held_out": n,
            "median_rel_error": _quantile(self.errors, 0.5),
            "p90_rel_error": _quantile(self.errors, 0.9),
            "interval": COVERAGE,
            "interval_coverage": self.covered / n if n else None,
            "raw_interval_coverage": self.raw_covered / n if n else None,
            "interval_widening": math.exp(self.widening),
        }


def conformal_widening(scores: list[float], coverage: float = COVERAGE) -> float:
    """The split-conformal quantile of ``scores``: the ``ceil((n + 1) * coverage) / n`` empirical
    quantile (the largest score when n is too small for it), 0 without scores."""
    if not scores:
        return 0.0
    ordered = sorted(scores)
    rank = math.ceil((len(ordered) + 1) * coverage)
    return float(ordered[min(rank, len(ordered)) - 1])


def _quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    import numpy as np

    return float(np.quantile(np.asarray(values), q))


def _fold(job_id: str) -> int:
    return int(hashlib.sha256(job_id.encode()).hexdigest()[:8], 16) % FOLDS


class _Quantiles:
    """Three quantile regressors on one target."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.models: list[Any] = []

    def fit(self, x: Any, y: Any) -> _Quantiles:
        from sklearn.ensemble import HistGradientBoostingRegressor

        rows = len(y)
        self.models = [
            HistGradientBoostingRegressor(
                loss="quantile",
                quantile=q,
                max_iter=300,
                learning_rate=0.05,
                max_depth=4,
                min_samples_leaf=max(2, min(10, rows // 10)),
                l2_regularization=1e-3,
                random_state=self.seed,
            ).fit(x, y)
            for q in QUANTILES
        ]
        return self

    def predict(self, x: Any) -> Any:
        import numpy as np

        low, mid, high = (m.predict(x) for m in self.models)
        stacked = np.sort(np.stack([low, mid, high]), axis=0)  # quantile crossing, if any
        return stacked[0], stacked[1], stacked[2]


class Predictor:
    """Fit on training rows; predict a (file, threads, runtime, board) for a known class."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.latency: _Quantiles | None = None
        self.memory: _Quantiles | None = None
        self.class_rows: dict[str, int] = {}
        self.errors: dict[str, ClassError] = {}
        self.rows = 0

    # -- training ------------------------------------------------------------------------------
    def fit(self, rows: list[TrainingRow]) -> Predictor:
        """Fit on ``rows`` (held-out errors first, then on everything)."""
        import numpy as np

        usable = [r for r in rows if r.p90_ms > 0 and r.peak_rss_mb > 0]
        self.rows = len(usable)
        self.class_rows = {}
        for row in usable:
            self.class_rows[row.board.key] = self.class_rows.get(row.board.key, 0) + 1
        self.errors = {}
        if len(usable) < MIN_ROWS:
            self.latency = self.memory = None
            return self
        x = np.asarray([r.x for r in usable], dtype=float)
        lat = np.asarray([self._lat_target(r.p90_ms, r.macs) for r in usable])
        mem = np.log(np.asarray([r.peak_rss_mb for r in usable]))
        folds = np.asarray([_fold(r.job_id) for r in usable])
        for k in range(FOLDS):
            test = folds == k
            train = ~test
            if not test.any() or train.sum() < MIN_ROWS:
                continue
            model = _Quantiles(self.seed).fit(x[train], lat[train])
            low, mid, high = model.predict(x[test])
            for index, row_index in enumerate(np.flatnonzero(test)):
                row = usable[row_index]
                # Only classes the training folds had enough of count: an unknown class is
                # never predicted in use either.
                seen = sum(1 for j in np.flatnonzero(train) if usable[j].board.key == row.board.key)
                if seen < MIN_CLASS_ROWS:
                    continue
                predicted = self._lat_value(mid[index], row.macs)
                entry = self.errors.setdefault(row.board.key, ClassError(row.board))
                entry.errors.append(abs(predicted - row.p90_ms) / row.p90_ms)
                lo = self._lat_value(low[index], row.macs)
                hi = self._lat_value(high[index], row.macs)
                entry.raw_covered += int(lo <= row.p90_ms <= hi)
                target = lat[row_index]
                entry.scores.append(
                    (k, float(max(low[index] - target, target - high[index]))),
                )
        self._calibrate()
        self.latency = _Quantiles(self.seed).fit(x, lat)
        self.memory = _Quantiles(self.seed).fit(x, mem)
        return self

    def _calibrate(self) -> None:
        """Each class's widening from its held-out nonconformities, and the coverage it would
        have had on each fold with the widening of the other folds only."""
        for entry in self.errors.values():
            entry.widening = conformal_widening([s for _, s in entry.scores])
            entry.covered = 0
            for fold, score in entry.scores:
                others = [s for f, s in entry.scores if f != fold]
                entry.covered += int(score <= conformal_widening(others))

    @staticmethod
    def _lat_target(p90_ms: float, macs: float) -> float:
        return math.log(p90_ms) - math.log1p(macs)

    @staticmethod
    def _lat_value(target: float, macs: float) -> float:
        return float(math.exp(target + math.log1p(macs)))

    # -- use -----------------------------------------------------------------------------------
    def known(self, board: BoardClass) -> bool:
        return self.latency is not None and self.class_rows.get(board.key, 0) >= MIN_CLASS_ROWS

    def predict(self, x: list[float], macs: float, board: BoardClass) -> Prediction:
        rows = self.class_rows.get(board.key, 0)
        error = self.errors.get(board.key)
        if not self.known(board):
            why = (
                f"the predictor has {rows} result(s) of board class {board.key} "
                f"({board.describe()}); it predicts from {MIN_CLASS_ROWS} on"
                if self.latency is not None
                else f"the predictor has {self.rows} stored result(s) in all, too few to fit"
            )
            return Prediction(False, board.key, class_rows=rows, reason=why)
        import numpy as np

        assert self.latency is not None and self.memory is not None
        arr = np.asarray([x], dtype=float)
        low, mid, high = (float(v[0]) for v in self.latency.predict(arr))
        widen = error.widening if error is not None else 0.0
        low, high = min(low - widen, mid), max(high + widen, mid)
        mlow, mmid, mhigh = (float(math.exp(v[0])) for v in self.memory.predict(arr))
        return Prediction(
            True,
            board.key,
            latency_p90_ms=self._lat_value(mid, macs),
            latency_interval=(self._lat_value(low, macs), self._lat_value(high, macs)),
            peak_rss_mb=mmid,
            memory_interval=(mlow, mhigh),
            class_rows=rows,
            class_error=error.summary() if error is not None else None,
        )

    def error_summary(self) -> dict[str, Any]:
        """Per board class and over all: held-out median and p90 relative latency error."""
        every = [e for c in self.errors.values() for e in c.errors]
        return {
            "rows": self.rows,
            "classes": {key: c.summary() for key, c in self.errors.items()},
            "median_rel_error": _quantile(every, 0.5),
            "p90_rel_error": _quantile(every, 0.9),
            "held_out": len(every),
        }


__all__ = [
    "COVERAGE",
    "MIN_CLASS_ROWS",
    "ClassError",
    "Prediction",
    "Predictor",
    "TrainingRow",
    "conformal_widening",
    "feature_names",
]
