"""Quality scores, computed the same way by the host and by the board's benchmark worker.

Both sides call :func:`score` on the same arrays: the outputs of one model file on the eval set
(samples along axis 0), the labels ``y`` and/or the uncompressed model's outputs ``ref``. So a board
reports exactly the figure the host measured for the same file, with the same name.

Which metric (:func:`metric_for`), higher is better for all of them:

- ``classification`` with labels: ``accuracy``, top-1 against ``y``;
- ``classification`` without labels: ``agreement``, top-1 against the reference's top-1;
- ``embedding``: ``cosine``, mean per-sample cosine similarity to the reference;
- ``regression``: ``r2``, the coefficient of determination of the outputs against the labels when
  the eval set has real-valued labels ``y`` (of any per-sample shape), else against the reference
  (1 - squared error / variance of the target): 1 when identical, 0 for a constant guess.

Every score carries its sample count and a 95% interval: Wilson's for the proportions (accuracy,
agreement), a percentile bootstrap over samples for cosine and r2. :func:`eval_warnings` names what
makes an eval set say little: too few samples, a reference whose top-1 never changes, outputs that
are all near zero.

numpy only, and only what numpy 1.x (boards with tflite-runtime 2.14) and 2.x both provide. This
module is imported by the benchmark worker process, never by the agent itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from shared.errors import EdgeTailorError
from shared.results import MAX_SAMPLE_SCORES

TASKS: tuple[str, ...] = ("classification", "embedding", "regression")
BUILTIN_METRICS: tuple[str, ...] = ("accuracy", "agreement", "cosine", "r2")
PROPORTIONS: tuple[str, ...] = ("accuracy", "agreement")

# Below this many samples a 95% interval on a proportion is wider than +-10 points.
MIN_TRUSTED_SAMPLES = 100
# Outputs whose largest magnitude is below this carry no signal a metric could compare.
NEAR_ZERO = 1e-6
Z_95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 1000
# r2 does not decompose into a mean: each resample costs a pass over the outputs.
R2_RESAMPLES = 200
BOOTSTRAP_SEED = 0


class ScoringError(EdgeTailorError):
    """Outputs, labels and reference cannot be scored together (missing, or shapes disagree)."""


@dataclass(frozen=True)
class Score:
    """One metric on one eval set: the value, how many samples, and its 95% interval."""

    name: str
    value: float
    samples: int
    low: float
    high: float
    method: str  # "wilson" or "bootstrap"
    per_sample: list[float] | None = field(default=None, repr=False)

    @property
    def interval(self) -> tuple[float, float]:
        return (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "metric_value": self.value,
            "eval_samples": self.samples,
            "metric_interval": [self.low, self.high],
            "interval_method": self.method,
        }


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ScoringError(f"unknown task {task!r}; use one of {', '.join(TASKS)}")
    return task


def metric_for(task: str, has_labels: bool) -> str:
    """The built-in metric of a task: see the module doc."""
    check_task(task)
    if task == "classification":
        return "accuracy" if has_labels else "agreement"
    if task == "embedding":
        return "cosine"
    return "r2"


def as_rows(array: Any) -> np.ndarray:
    """Samples along axis 0, everything else flattened, as float64 (the same on every numpy)."""
    values = np.asarray(array, dtype=np.float64)
    if values.ndim == 0:
        raise ScoringError("outputs are a scalar; samples must lie along axis 0")
    return values.reshape(len(values), -1)


def top1(array: Any) -> np.ndarray:
    return as_rows(array).argmax(axis=1)


def correct_per_sample(outputs: Any, labels: Any) -> np.ndarray:
    predicted = top1(outputs)
    truth = np.asarray(labels).reshape(len(predicted), -1)[:, 0].astype(np.int64)
    return (predicted == truth).astype(np.float64)


def agree_per_sample(outputs: Any, reference: Any) -> np.ndarray:
    return (top1(outputs) == top1(reference)).astype(np.float64)


def cosine_per_sample(outputs: Any, reference: Any) -> np.ndarray:
    """Cosine similarity of each output row with its reference row; two zero rows count as 1."""
    a, b = as_rows(outputs), as_rows(reference)
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    return np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))


def accuracy(outputs: Any, labels: Any) -> float:
    return float(np.mean(correct_per_sample(outputs, labels)))


def agreement(outputs: Any, reference: Any) -> float:
    return float(np.mean(agree_per_sample(outputs, reference)))


def cosine(outputs: Any, reference: Any) -> float:
    return float(np.mean(cosine_per_sample(outputs, reference)))


def mse(outputs: Any, reference: Any) -> float:
    return float(np.mean((as_rows(outputs) - as_rows(reference)) ** 2))


def relative_error(outputs: Any, reference: Any) -> float:
    """||outputs - reference|| / ||reference|| over the whole array (0 when identical)."""
    a, b = as_rows(outputs), as_rows(reference)
    denom = float(np.linalg.norm(b)) or 1.0
    return float(np.linalg.norm(a - b) / denom)


def r2(outputs: Any, reference: Any) -> float:
    """1 - sum of squared errors / total variance of the reference around its per-column mean."""
    a, b = as_rows(outputs), as_rows(reference)
    sse = float(np.sum((a - b) ** 2))
    sst = float(np.sum((b - b.mean(axis=0)) ** 2))
    if sst == 0:
        return 1.0 if sse == 0 else 0.0
    return 1.0 - sse / sst


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion (well-behaved at 0, 1 and small n)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def _resamples(n: int, resamples: int, seed: int, batch: int = 64) -> Iterator[np.ndarray]:
    """Bootstrap resamples of ``n`` sample indices, ``batch`` at a time (bounded memory)."""
    rng = np.random.default_rng(seed)
    done = 0
    while done < resamples:
        size = min(batch, resamples - done)
        yield rng.integers(0, n, size=(size, n))
        done += size


def bootstrap_mean_interval(
    values: Any, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of per-sample values."""
    data = np.asarray(values, dtype=np.float64).reshape(-1)
    if data.size == 0:
        return (math.nan, math.nan)
    if np.all(data == data[0]):
        return (float(data[0]), float(data[0]))
    means = np.concatenate(
        [data[idx].mean(axis=1) for idx in _resamples(data.size, resamples, seed)]
    )
    low, high = np.percentile(means, [2.5, 97.5])
    return (float(low), float(high))


def bootstrap_interval(
    statistic: Any,
    n: int,
    resamples: int = 200,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of ``statistic(indices)`` over samples drawn with
    replacement; for statistics that do not decompose into a mean (r2, user metrics)."""
    if n <= 1:
        value = float(statistic(np.arange(n)))
        return (value, value)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        value = float(statistic(rng.integers(0, n, size=n)))
        if math.isfinite(value):
            values.append(value)
    if not values:
        return (math.nan, math.nan)
    low, high = np.percentile(np.asarray(values), [2.5, 97.5])
    return (float(low), float(high))


def _r2_interval(outputs: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    a, b = as_rows(outputs), as_rows(reference)
    n = len(a)
    if n < 2:
        value = r2(a, b)
        return (value, value)
    sq_err = np.sum((a - b) ** 2, axis=1)
    sq_norm = np.sum(b * b, axis=1)
    values = []
    for batch in _resamples(n, R2_RESAMPLES, BOOTSTRAP_SEED):
        for idx in batch:
            counts = np.bincount(idx, minlength=n).astype(np.float64)
            mean = counts @ b / n
            # Sum of squares of the resample around its own mean: sum ||b||^2 - n ||mean||^2.
            sst = float(counts @ sq_norm - n * float(mean @ mean))
            if sst > 0:
                values.append(1.0 - float(counts @ sq_err) / sst)
    if not values:
        value = r2(a, b)
        return (value, value)
    low, high = np.percentile(np.asarray(values), [2.5, 97.5])
    return (float(low), float(high))


def _check_rows(outputs: np.ndarray, other: Any, what: str) -> None:
    if len(outputs) != len(other):
        raise ScoringError(f"{len(outputs)} outputs but {len(other)} {what}")


def score(
    outputs: Any,
    labels: Any | None,
    reference: Any | None,
    task: str,
) -> Score:
    """The task's built-in metric of ``outputs`` with its interval (see the module doc)."""
    out = as_rows(outputs)
    name = metric_for(task, labels is not None)
    n = len(out)
    if name == "accuracy":
        _check_rows(out, labels, "labels")
        per = correct_per_sample(out, labels)
    else:
        target = reference
        # A regressor's real-valued labels are the truth; other tasks fall back on labels only
        # where there is no reference.
        if (
            labels is not None
            and task != "classification"
            and (task == "regression" or target is None)
        ):
            target = labels
        if target is None:
            raise ScoringError(
                f"no labels and no reference outputs to score a {task} model; give labelled data "
                "or the uncompressed model's outputs as reference"
            )
        ref = as_rows(target)
        _check_rows(out, ref, "reference outputs")
        if out.shape != ref.shape:
            raise ScoringError(
                f"outputs {list(np.shape(outputs))} and reference {list(np.shape(target))} differ "
                "in shape"
            )
        if name == "agreement":
            per = agree_per_sample(out, ref)
        elif name == "cosine":
            per = cosine_per_sample(out, ref)
        else:
            value = r2(out, ref) if n else math.nan
            low, high = _r2_interval(out, ref) if n else (math.nan, math.nan)
            return Score(name, value, n, low, high, "bootstrap")
    if n == 0:
        return Score(name, math.nan, 0, math.nan, math.nan, "none")
    value = float(np.mean(per))
    if name in PROPORTIONS:
        low, high = wilson_interval(float(np.sum(per)), n)
        method = "wilson"
    else:
        low, high = bootstrap_mean_interval(per)
        method = "bootstrap"
    sample_scores = [round(float(v), 6) for v in per] if n <= MAX_SAMPLE_SCORES else None
    return Score(name, value, n, low, high, method, sample_scores)


def paired_drop_interval(
    baseline_per_sample: Sequence[float], candidate_per_sample: Sequence[float]
) -> tuple[float, float]:
    """95% bootstrap interval of mean(baseline - candidate) over the same samples.

    A candidate and its baseline are scored on the same eval samples, so their difference is far
    better determined than either figure alone: most samples are right (or wrong) for both.
    """
    base = np.asarray(baseline_per_sample, dtype=np.float64).reshape(-1)
    cand = np.asarray(candidate_per_sample, dtype=np.float64).reshape(-1)
    if base.shape != cand.shape:
        raise ScoringError(
            f"{base.size} baseline scores and {cand.size} candidate scores: a paired interval "
            "needs the same samples"
        )
    return bootstrap_mean_interval(base - cand)


def eval_warnings(
    samples: int,
    labels: Any | None,
    reference: Any | None,
    task: str,
    predictions: Any | None = None,
) -> list[str]:
    """What makes this eval set say little about a model; empty when nothing does.

    ``predictions`` are the uncompressed model's outputs where they are not the reference (a
    classifier scored against labels): a model whose top-1 never changes is untrained or does not
    fit the data, and every candidate's accuracy then measures the class balance, not the model.
    """
    warnings: list[str] = []
    if samples < MIN_TRUSTED_SAMPLES:
        warnings.append(
            f"the eval set has {samples} samples (fewer than {MIN_TRUSTED_SAMPLES}): metric "
            "intervals are wide; give more data"
        )
    metric = metric_for(task, labels is not None)
    if metric == "accuracy" and labels is not None and samples > 1:
        values = np.asarray(labels).reshape(-1)[:samples]
        if values.size and np.all(values == values[0]):
            warnings.append(
                f"every eval label is {int(values[0])}: accuracy says nothing about the model"
            )
    if reference is not None and samples > 0:
        ref = as_rows(reference)[:samples]
        peak = float(np.max(np.abs(ref))) if ref.size else 0.0
        if not math.isfinite(peak):
            warnings.append("the reference outputs contain NaN or infinite values")
        elif peak < NEAR_ZERO:
            warnings.append(
                f"the reference outputs are all near zero (largest magnitude {peak:.2g}): "
                f"{metric} against them says nothing"
            )
        elif metric == "agreement" and samples > 1:
            first = ref.argmax(axis=1)
            if np.all(first == first[0]):
                warnings.append(
                    f"the reference's top-1 is {int(first[0])} for every eval sample: agreement "
                    "says nothing (is this a classifier? try --task embedding or regression)"
                )
    if metric == "accuracy" and predictions is not None and samples > 1:
        predicted = top1(as_rows(predictions)[:samples])
        if predicted.size and np.all(predicted == predicted[0]):
            warnings.append(
                f"the uncompressed model predicts class {int(predicted[0])} for every eval sample: it "
                "is untrained or does not fit this data, so accuracy measures the class balance "
                "(train it first: --pretrain-epochs, or --weights)"
            )
    return warnings


__all__ = [
    "BUILTIN_METRICS",
    "MAX_SAMPLE_SCORES",
    "MIN_TRUSTED_SAMPLES",
    "TASKS",
    "Score",
    "ScoringError",
    "accuracy",
    "agreement",
    "bootstrap_interval",
    "bootstrap_mean_interval",
    "check_task",
    "cosine",
    "eval_warnings",
    "metric_for",
    "mse",
    "paired_drop_interval",
    "r2",
    "relative_error",
    "score",
    "wilson_interval",
]
