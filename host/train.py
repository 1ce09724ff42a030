"""Training loops shared by fine-tuning, distillation and QAT: supervised, distilled, or fidelity.

:func:`fit` trains ``module`` in place and returns it:

* no teacher, labels -> cross-entropy (classification) or MSE to the labels (regression);
* teacher and labels -> Hinton distillation: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
  (1 - alpha) * CE``;
* teacher, no labels -> fidelity to the teacher only (softened KL for classifiers, MSE otherwise).

It runs on CUDA when the host has it (:func:`train_device`) and leaves the module there; callers that
export move it back (exporters deepcopy to the CPU anyway).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from host.data import DataSet
from host.errors import CompressionError
from host.metrics import to_tensor

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]


def train_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fit(
    module: nn.Module,
    data: DataSet,
    epochs: int,
    lr: float,
    *,
    teacher: nn.Module | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    batch_size: int = 64,
    seed: int = 0,
    progress: Progress | None = None,
    task: str = "classification",
    weight_decay: float = 0.0,
) -> nn.Module:
    """Train ``module`` on ``data.train``; ``progress(message, fraction_done)`` after each epoch."""
    if epochs < 0:
        raise CompressionError(f"epochs must be >= 0, got {epochs}")
    if not lr > 0:
        raise CompressionError(f"learning rate must be > 0, got {lr}")
    if not 0.0 <= alpha <= 1.0:
        raise CompressionError(f"distillation alpha must be within [0, 1], got {alpha}")
    if not temperature > 0:
        raise CompressionError(f"distillation temperature must be > 0, got {temperature}")
    has_labels = data.train.labels is not None
    if teacher is None and not has_labels:
        raise CompressionError(
            "training without labels needs a teacher (the uncompressed model) to match; "
            "give labelled data or train by distillation"
        )
    if epochs == 0:
        return module
    torch.manual_seed(seed)
    device = train_device()
    module.to(device).train()
    if teacher is not None:
        teacher.to(device).eval()
    optimizer = torch.optim.Adam(
        [p for p in module.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay
    )
    steps_per_epoch = max(1, -(-len(data.train) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs * steps_per_epoch)
    for epoch in range(epochs):
        total, count = 0.0, 0
        for inputs, labels in data.train.batches(batch_size, shuffle=True, seed=seed + epoch):
            tensors = [to_tensor(a, device) for a in inputs]
            out = _first(module(*tensors))
            target = None if labels is None else torch.from_numpy(labels).to(device)
            loss = _loss(out, target, teacher, tensors, temperature, alpha, task)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            total += float(loss.detach()) * len(tensors[0])
            count += len(tensors[0])
        mean = total / max(count, 1)
        logger.debug("epoch %d/%d loss %.4f", epoch + 1, epochs, mean)
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs} loss {mean:.4f}", (epoch + 1) / epochs)
    module.eval()
    return module


def _first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _loss(
    out: torch.Tensor,
    labels: torch.Tensor | None,
    teacher: nn.Module | None,
    inputs: list[torch.Tensor],
    temperature: float,
    alpha: float,
    task: str,
) -> torch.Tensor:
    classification = task == "classification"
    hard: torch.Tensor | None = None
    if labels is not None:
        hard = F.cross_entropy(out, labels) if classification else F.mse_loss(out, labels.float().view_as(out))
    if teacher is None:
        if hard is None:
            raise CompressionError("no labels and no teacher: nothing to train towards")
        return hard
    with torch.no_grad():
        teacher_out = _first(teacher(*inputs))
    if classification:
        soft = F.kl_div(
            F.log_softmax(out / temperature, dim=-1),
            F.softmax(teacher_out / temperature, dim=-1),
            reduction="batchmean",
        ) * temperature**2
    else:
        soft = F.mse_loss(out, teacher_out)
    return soft if hard is None else alpha * soft + (1.0 - alpha) * hard


__all__ = ["Progress", "fit", "train_device"]
