"""Model metrics: accuracy, fidelity to the uncompressed model, parameter and MAC counts.

The metric depends on the task and on what is known: top-1 ``accuracy`` when labels exist for a
classifier; otherwise fidelity to the uncompressed model's outputs (``reference``): top-1
``agreement`` for classifiers, mean ``cosine`` similarity for embeddings and regressors. Higher is
better for all three; the device computes the same from the shipped eval npz (``y`` / ``ref``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from host.errors import DataError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.data import Split

logger = logging.getLogger(__name__)

METRICS: tuple[str, ...] = ("accuracy", "agreement", "cosine")


@dataclass(frozen=True)
class MetricResult:
    name: str
    value: float


def pick_metric(task: str, has_labels: bool) -> str:
    if task == "classification":
        return "accuracy" if has_labels else "agreement"
    if task in ("regression", "embedding"):
        return "cosine"
    raise DataError(f"unknown task {task!r}; use classification, regression or embedding")


def score_outputs(
    outputs: np.ndarray,
    labels: np.ndarray | None,
    reference: np.ndarray | None,
    task: str,
) -> MetricResult:
    """Score model outputs (samples along axis 0); see the module doc for which metric applies."""
    outputs = np.asarray(outputs, dtype=np.float32)
    name = pick_metric(task, labels is not None)
    if name == "accuracy":
        _check_len(outputs, labels, "labels")
        return MetricResult(
            name, float(np.mean(outputs.reshape(len(outputs), -1).argmax(1) == labels))
        )
    target = reference
    if target is None and task != "classification" and labels is not None:
        target = labels
    if target is None:
        raise DataError(
            f"no labels and no reference outputs to score a {task} model; give labelled data or the "
            "uncompressed model's outputs as reference"
        )
    target = np.asarray(target, dtype=np.float32)
    _check_len(outputs, target, "reference outputs")
    a = outputs.reshape(len(outputs), -1)
    b = target.reshape(len(target), -1)
    if a.shape != b.shape:
        raise DataError(f"outputs {outputs.shape} and reference {target.shape} differ in shape")
    if name == "agreement":
        return MetricResult(name, float(np.mean(a.argmax(1) == b.argmax(1))))
    return MetricResult(name, cosine_similarity(a, b))


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean per-sample cosine similarity; two all-zero rows count as identical."""
    num = np.sum(a * b, axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    both_zero = den == 0
    cos = np.where(both_zero, 1.0, num / np.where(both_zero, 1.0, den))
    return float(np.mean(cos))


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """||a - b|| / ||b|| over the whole array (0 when identical)."""
    denom = float(np.linalg.norm(b)) or 1.0
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / denom)


def _check_len(outputs: np.ndarray, other: np.ndarray, what: str) -> None:
    if len(outputs) != len(other):
        raise DataError(f"{len(outputs)} outputs but {len(other)} {what}")


def predict(module: nn.Module, split: Split, batch_size: int = 256) -> np.ndarray:
    """Outputs of ``module`` on every sample of ``split`` (float32 numpy, on the module's device)."""
    import torch

    device = _device_of(module)
    was_training = module.training
    module.eval()
    outs = []
    try:
        with torch.no_grad():
            for inputs, _ in split.batches(batch_size):
                tensors = [to_tensor(a, device) for a in inputs]
                out = module(*tensors)
                if isinstance(out, (tuple, list)):
                    out = out[0]
                outs.append(out.detach().float().cpu().numpy())
    finally:
        module.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


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
    """Multiply-accumulates of one forward pass on ``example_inputs`` (torch's flop counter / 2)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    device = _device_of(module)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(*(t.to(device) for t in example_inputs))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops() // 2)


__all__ = [
    "METRICS",
    "MetricResult",
    "cosine_similarity",
    "count_macs",
    "count_params",
    "evaluate_module",
    "pick_metric",
    "predict",
    "relative_error",
    "score_outputs",
    "to_tensor",
]
