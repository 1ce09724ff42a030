"""Model metrics: accuracy, fidelity to the uncompressed model, user metrics, params and MACs.

The built-in scores come from shared.scoring, the numpy-only functions the board's benchmark worker
scores with too, so host and board report the same figure under the same name for the same file:
top-1 ``accuracy`` when a classifier has labels; otherwise fidelity to the uncompressed model's
outputs (``reference``): top-1 ``agreement`` for classifiers, mean ``cosine`` similarity for
embeddings, ``r2`` for regressors. Each carries its sample count and a 95% interval.

A user metric (``--metric pkg.mod:fn`` or ``file.py:fn``) is ``fn(outputs, target) -> float``,
higher is better, where ``outputs`` holds the model's outputs on the eval set (samples along axis
0; a list of arrays for a model with several outputs) and ``target`` the labels, or the reference
outputs when there are none. It is always computed on the host: from the host's run of a file, and
from the raw outputs a board sends back.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from host.errors import ConfigError, DataError
from host.models import resolve_factory
from shared import scoring

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.data import Split

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = scoring.BUILTIN_METRICS
# A user metric is called once per bootstrap resample for its interval, plus once for the value.
USER_METRIC_RESAMPLES = 100


@dataclass(frozen=True)
class MetricResult:
    """A metric on an eval set: value, sample count, 95% interval, per-sample scores, warnings."""

    name: str
    value: float
    samples: int = 0
    low: float | None = None
    high: float | None = None
    method: str | None = None
    per_sample: list[float] | None = field(default=None, repr=False)
    warnings: tuple[str, ...] = ()

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.low is None or self.high is None:
            return None
        return (self.low, self.high)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metric": self.name,
            "metric_value": self.value,
            "eval_samples": self.samples,
            "metric_interval": None if self.interval is None else list(self.interval),
            "interval_method": self.method,
        }


def pick_metric(task: str, has_labels: bool) -> str:
    try:
        return scoring.metric_for(task, has_labels)
    except scoring.ScoringError as exc:
        raise DataError(str(exc)) from exc


def score_outputs(
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray | None,
    task: str,
) -> MetricResult:
    """Score model outputs (samples along axis 0) with shared.scoring; see the module doc."""
    try:
        scored = scoring.score(outputs, labels, reference, task)
        warnings = scoring.eval_warnings(len(outputs), labels, reference, task)
    except scoring.ScoringError as exc:
        raise DataError(str(exc)) from exc
    return MetricResult(
        scored.name,
        scored.value,
        scored.samples,
        scored.low,
        scored.high,
        scored.method,
        scored.per_sample,
        tuple(warnings),
    )


@dataclass(frozen=True)
class UserMetric:
    """``fn(outputs, labels_or_reference) -> float`` named by a spec; higher is better."""

    spec: str
    name: str
    fn: Callable[[Any, Any], float]

    def __call__(self, outputs: Any, target: Any) -> float:
        try:
            value = float(self.fn(outputs, target))
        except Exception as exc:
            raise DataError(f"metric {self.spec} failed: {type(exc).__name__}: {exc}") from exc
        return value


def load_metric(spec: str) -> UserMetric:
    """``pkg.mod:fn`` or ``path/file.py:fn`` -> the metric; a one-line ConfigError otherwise."""

    fn = resolve_factory(spec, what="metric")
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}
    positional = [
        p
        for p in params.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL)
    ]
    if params and len(positional) < 2 and not any(p.kind is p.VAR_POSITIONAL for p in positional):
        raise ConfigError(
            f"metric {spec!r} must take (outputs, labels_or_reference) and return a float"
        )
    name = spec.rpartition(":")[2]
    if name in METRICS:
        name = f"user_{name}"  # never mistaken for the built-in figure of that name
    return UserMetric(spec, name, fn)


def _take(outputs: Any, idx: np.ndarray) -> Any:
    if isinstance(outputs, (list, tuple)):
        return [np.asarray(o)[idx] for o in outputs]
    return np.asarray(outputs)[idx]


def _rows(values: Any) -> int:
    return len(values[0]) if isinstance(values, (list, tuple)) else len(values)


def score_user_metric(
    metric: UserMetric,
    outputs: np.ndarray | Sequence[np.ndarray],
    labels: np.ndarray | Sequence[np.ndarray] | None,
    reference: np.ndarray | None,
    *,
    resamples: int = USER_METRIC_RESAMPLES,
) -> MetricResult:
    """The user metric on the eval outputs, with a bootstrap interval over samples. ``labels`` is
    one target array or the list of several (``y0, y1, ...``), passed on as they are."""
    target = labels if labels is not None else reference
    if target is None:
        raise DataError(
            f"metric {metric.spec} needs labels or reference outputs to compare with; the eval "
            "set has neither"
        )
    n = _rows(outputs)
    if _rows(target) != n:
        raise DataError(f"{n} outputs but {_rows(target)} labels/reference outputs")
    value = metric(outputs, target)
    if not math.isfinite(value):
        raise DataError(f"metric {metric.spec} returned {value}; it must return a finite float")

    def resampled(idx: np.ndarray) -> float:
        try:
            return metric(_take(outputs, idx), _take(target, idx))
        except DataError:
            return math.nan  # a resample the metric cannot score (e.g. one class only)

    low, high = scoring.bootstrap_interval(resampled, n, resamples=resamples)
    first_labels = labels[0] if isinstance(labels, (list, tuple)) else labels
    class_labels = first_labels is not None and np.asarray(first_labels).dtype.kind in "iu"
    warnings = scoring.eval_warnings(
        n,
        first_labels if class_labels else None,
        reference,
        "classification" if class_labels else "embedding",
    )
    return MetricResult(
        metric.name,
        value,
        n,
        None if math.isnan(low) else low,
        None if math.isnan(high) else high,
        "bootstrap",
        None,
        tuple(warnings),
    )


def user_metric_drop_interval(
    metric: UserMetric,
    baseline_outputs: Any,
    outputs: Any,
    labels: np.ndarray | Sequence[np.ndarray] | None,
    reference: np.ndarray | None,
    *,
    resamples: int = USER_METRIC_RESAMPLES,
) -> tuple[float, float] | None:
    """95% bootstrap interval of metric(baseline) - metric(candidate), both on the same resampled
    eval samples: far narrower than the two intervals side by side."""
    target = labels if labels is not None else reference
    if target is None:
        return None

    def drop(idx: np.ndarray) -> float:
        try:
            return metric(_take(baseline_outputs, idx), _take(target, idx)) - metric(
                _take(outputs, idx), _take(target, idx)
            )
        except DataError:
            return math.nan

    low, high = scoring.bootstrap_interval(drop, _rows(target), resamples=resamples)
    return None if math.isnan(low) or math.isnan(high) else (low, high)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity; two all-zero rows count as identical."""
    return scoring.cosine(a, b)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole array (0 when identical)."""
    return scoring.relative_error(a, b)


def predict(module: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``module`` on every sample of ``split`` (float32 numpy, on the module's device);
    the first output of a model that returns several."""
    return predict_all(module, split, batch_size)[0]


def predict_all(module: nn.Module, split: Split, batch_size: int = 256) -> list[np.ndarray]:
    """Every output of ``module`` on every sample of ``split`` (float32 numpy)."""
    import torch

    device = _device_of(module)
    was_training = module.training
    module.eval()
    outs: list[list[np.ndarray]] = []
    try:
        with torch.no_grad():
            for inputs, _ in split.batches(batch_size):
                tensors = [to_tensor(a, device) for a in inputs]
                out = module(*tensors)
                parts = list(out) if isinstance(out, (tuple, list)) else [out]
                outs.append([p.detach().float().cpu().numpy() for p in parts])
    finally:
        module.train(was_training)
    if not outs:
        return [np.zeros((0,), np.float32)]
    return [np.concatenate(group) for group in zip(*outs, strict=True)]


def user_outputs(outputs: Sequence[np.ndarray]) -> np.ndarray | list[np.ndarray]:
    """What a user metric receives: the output array, or the list of them for several outputs."""
    return outputs[0] if len(outputs) == 1 else list(outputs)


def to_tensor(array: np.ndarray, device: torch.device | str = "cpu") -> torch.Tensor:
    import torch

    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.dtype == torch.float64:
        tensor = tensor.float()
    return tensor.to(device)


def _device_of(module: nn.Module) -> torch.device:
    import torch

    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def evaluate_module(
    module: nn.Module, split: Split, task: str, reference: np.ndarray | None = None
) -> MetricResult:
    return score_outputs(predict(module, split), split.labels, reference, task)


def count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def count_macs(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> int:
    """Multiply-accumulates of one forward pass on ``example_inputs`` (torch's flop counter / 2).

    A fused recurrent layer (``nn.LSTM``, ``nn.GRU``, ``nn.RNN``) runs as one op the flop counter
    may not see into (an LSTM on the CPU counts 0): its MACs are counted from its shapes instead
    (:func:`host.models.recurrent.recurrent_macs`), in place of whatever the counter saw inside it.
    The linear form's matrices are ordinary Linear layers and are counted as such.
    """
    import torch
    from torch import nn
    from torch.utils.flop_counter import FlopCounterMode

    from host.models.recurrent import recurrent_macs

    device = _device_of(module)
    was_training = module.training
    module.eval()
    fused: dict[str, int] = {}
    hooks = []
    root = type(module).__name__
    for name, layer in module.named_modules():
        if isinstance(layer, nn.RNNBase):

            def record(layer: nn.Module, args: tuple, name: str = name) -> None:
                fused[name] = fused.get(name, 0) + (recurrent_macs(layer, args[0]) if args else 0)

            hooks.append(layer.register_forward_pre_hook(record))
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*(t.to(device) for t in example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    flops = counter.get_total_flops()
    if fused:
        counts = counter.get_flop_counts()
        for name, macs in fused.items():
            seen = counts.get(f"{root}.{name}" if name else root, {})
            flops += 2 * macs - sum(seen.values())
    return int(flops // 2)


__all__ = [
    "METRICS",
    "MetricResult",
    "UserMetric",
    "cosine_similarity",
    "count_macs",
    "count_params",
    "evaluate_module",
    "load_metric",
    "pick_metric",
    "predict",
    "predict_all",
    "relative_error",
    "score_outputs",
    "score_user_metric",
    "to_tensor",
    "user_metric_drop_interval",
    "user_outputs",
]
