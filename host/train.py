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

import copy
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from host.data import DataSet, Split
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
    keep_best: bool = True,
) -> nn.Module:
    """Train ``module`` on ``data.train``; ``progress(message, fraction_done)`` after each epoch.

    With ``keep_best`` the weights of the epoch that scored best on ``data.val`` are the ones
    returned (accuracy with labels, agreement with the teacher without them): a short fine-tune of
    a freshly pruned network can otherwise end on a worse epoch than one it passed through.
    """
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
    best: tuple[float, int, dict[str, Any]] | None = None
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch
    )
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
        if keep_best and len(data.val) > 0:
            score = _val_score(module, data.val, teacher, task, device, batch_size)
            if best is None or score > best[0]:
                best = (score, epoch, copy.deepcopy(module.state_dict()))
            module.train()
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs} loss {mean:.4f}", (epoch + 1) / epochs)
    if best is not None and best[1] != epochs - 1:
        logger.info("keeping epoch %d of %d (best on the validation split)", best[1] + 1, epochs)
        module.load_state_dict(best[2])
    module.eval()
    return module


@torch.no_grad()
def _val_score(
    module: nn.Module,
    split: Split,
    teacher: nn.Module | None,
    task: str,
    device: torch.device,
    batch_size: int,
) -> float:
    """Higher is better: accuracy, agreement with the teacher, or negative mean squared error."""
    module.eval()
    hits, count, sq_error = 0, 0, 0.0
    for inputs, labels in split.batches(batch_size):
        tensors = [to_tensor(a, device) for a in inputs]
        out = _first(module(*tensors)).float()
        if labels is not None:
            target = torch.from_numpy(labels).to(device)
        elif teacher is not None:
            target = _first(teacher(*tensors)).float()
            if task == "classification":
                target = target.argmax(dim=-1)
        else:
            return 0.0
        if task == "classification":
            hits += int((out.argmax(dim=-1) == target).sum())
        else:
            sq_error += float(F.mse_loss(out, target.float().view_as(out), reduction="sum"))
        count += len(tensors[0])
    if count == 0:
        return 0.0
    return hits / count if task == "classification" else -sq_error / count


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
        hard = (
            F.cross_entropy(out, labels)
            if classification
            else F.mse_loss(out, labels.float().view_as(out))
        )
    if teacher is None:
        if hard is None:
            raise CompressionError("no labels and no teacher: nothing to train towards")
        return hard
    with torch.no_grad():
        teacher_out = _first(teacher(*inputs))
    if classification:
        soft = (
            F.kl_div(
                F.log_softmax(out / temperature, dim=-1),
                F.softmax(teacher_out / temperature, dim=-1),
                reduction="batchmean",
            )
            * temperature**2
        )
    else:
        soft = F.mse_loss(out, teacher_out)
    return soft if hard is None else alpha * soft + (1.0 - alpha) * hard


__all__ = ["Progress", "fit", "train_device"]
