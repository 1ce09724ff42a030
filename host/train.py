"""Training loops shared by fine-tuning, distillation and QAT: supervised, distilled, or fidelity.

:func:`fit` trains ``module`` in place and returns it:

* no teacher, labels -> cross-entropy (classification) or MSE to the labels (regression);
* teacher and labels -> Hinton distillation: ``alpha * T^2 * KL(softmax(t/T) || softmax(s/T)) +
  (1 - alpha) * hard loss``;
* teacher, no labels -> fidelity to the teacher only: softened KL for classifiers, ``1 - cosine``
  plus the MSE relative to the teacher's mean square for embeddings, MSE for regressors.

A model with several outputs is trained on all of them: the first in its task's terms (above), every
other one towards the teacher's (MSE relative to the teacher's mean square, so a box regression and
class scores weigh alike) and towards its own target array where the data has one (``y1``, ...:
cross-entropy for one integer class per sample, MSE otherwise).

With ``keep_best`` the state that scores best on the validation split is returned, and the state
the module started from competes too: a recovery step never hands back a model worse than the one
it was given. When the first epoch leaves the model worse than it started (a learning rate tuned on
one architecture is far too high for another, e.g. 3e-3 with Adam for a transformer), training
restarts from the starting weights with a tenth of the learning rate, at most ``lr_retries`` times
(recovery steps ask for 2; training from scratch asks for none: its start is chance, and a first
epoch just below chance says nothing about the learning rate).

It runs on CUDA when the host has it (:func:`train_device`) and leaves the module there; callers that
export move it back (exporters deepcopy to the CPU anyway).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from host.compress.features import FeatureMatch
from host.data import DataSet, Split
from host.errors import CompressionError
from host.metrics import score_outputs, to_tensor

logger = logging.getLogger(__name__)

Progress = Callable[[str, float], None]

# A first epoch that loses more than this much validation score (one point of accuracy, agreement
# or cosine) means the learning rate is too high for the model, not noise of a few samples.
_WORSE_MARGIN = 0.01


@dataclass
class FitLog:
    """What :func:`fit` did, for the step notes: the learning rate used, the epoch kept, scores."""

    lr: float = 0.0
    start_score: float | None = None
    best_score: float | None = None
    kept_epoch: int | None = None  # 0: the starting weights; None: no validation
    metric: str = ""
    retries: int = 0
    epoch_scores: list[float] = field(default_factory=list)


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
    lr_retries: int = 0,
    masks: dict[str, torch.Tensor] | None = None,
    log: FitLog | None = None,
    features: FeatureMatch | None = None,
    mixup: float = 0.0,
) -> nn.Module:
    """Train ``module`` on ``data.train``; ``progress(message, fraction_done)`` after each epoch.

    With ``keep_best`` the weights that scored best on ``data.val`` (accuracy with labels,
    agreement or cosine with the teacher without them), the starting weights included, are the ones
    returned. ``masks`` maps parameter names to 0/1 tensors kept applied after every step (so a
    sparse model stays sparse). ``log`` receives what happened. ``features`` adds the distance of
    matched intermediate activations to the teacher's (host.compress.features) to the loss; its
    adapters train along and are left out of the returned module. ``mixup`` > 0 (with a teacher)
    adds to every batch a mixed copy of it, ``lam * x_i + (1 - lam) * x_j`` with ``lam ~
    Beta(mixup, mixup)`` per sample, trained towards the teacher's outputs on that same mixed input
    (computed as it is seen; labels train the unmixed half): the student matches the teacher's
    function between the training samples too, which a fine-tune towards stored outputs cannot.
    Batches with an input that is not floating point
    (token ids) are not mixed.
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
    log = log if log is not None else FitLog()
    log.lr = lr
    if epochs == 0:
        return module
    device = train_device()
    module.to(device)
    targets = _teacher_outputs(teacher, data.train, device, batch_size)
    validate = keep_best and len(data.val) > 0
    val_teacher = _teacher_outputs(teacher, data.val, device, batch_size) if validate else None
    val_reference = None if val_teacher is None else val_teacher[0]
    start_state = copy.deepcopy(module.state_dict())
    best: tuple[float, int, dict[str, Any], float] | None = None
    if validate:
        key, log.start_score, log.metric = _val_score(
            module, data.val, val_reference, task, device, batch_size
        )
        best = (key, 0, start_state, log.start_score)
    if features is not None:
        features.to(device).attach()
    for attempt in range(lr_retries + 1):
        log.retries, log.lr, log.epoch_scores = attempt, lr, []
        torch.manual_seed(seed)
        try:
            outcome = _train(
                module, data, epochs, lr, targets, val_reference, temperature, alpha, batch_size,
                seed, task, weight_decay, masks, device, validate, attempt < lr_retries, best, log,
                progress, features, teacher if mixup > 0 else None, mixup,
            )  # fmt: skip
        except BaseException:
            if features is not None:
                features.detach()
            raise
        best = outcome
        first = log.epoch_scores[0] if log.epoch_scores else None
        worse = (
            validate
            and first is not None
            and log.start_score is not None
            and first < log.start_score - _WORSE_MARGIN
        )
        if not worse or attempt == lr_retries:
            break
        logger.info(
            "epoch 1 at lr %g scored %.4f, below the starting %.4f: retrying at lr %g",
            lr,
            first,
            log.start_score,
            lr / 10,
        )
        module.load_state_dict(start_state)
        lr /= 10
    if features is not None:
        features.detach()
    if best is not None:
        log.best_score, log.kept_epoch = best[3], best[1]
        if best[1] != epochs:
            logger.info("keeping epoch %d of %d (best on the validation split)", best[1], epochs)
            module.load_state_dict(best[2])
    module.eval()
    return module


def _train(
    module: nn.Module,
    data: DataSet,
    epochs: int,
    lr: float,
    targets: list[np.ndarray] | None,
    val_reference: np.ndarray | None,
    temperature: float,
    alpha: float,
    batch_size: int,
    seed: int,
    task: str,
    weight_decay: float,
    masks: dict[str, torch.Tensor] | None,
    device: torch.device,
    validate: bool,
    can_retry: bool,
    best: tuple[float, int, dict[str, Any], float] | None,
    log: FitLog,
    progress: Progress | None,
    features: FeatureMatch | None = None,
    mixer: nn.Module | None = None,
    mixup: float = 0.0,
) -> tuple[float, int, dict[str, Any], float] | None:
    module.train()
    params = dict(module.named_parameters())
    mask_pairs = [
        (params[name], mask.to(device)) for name, mask in (masks or {}).items() if name in params
    ]
    trained = [p for p in module.parameters() if p.requires_grad]
    if features is not None:
        trained += list(features.adapters.parameters())
    optimizer = torch.optim.Adam(trained, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, -(-len(data.train) // batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=epochs * steps_per_epoch
    )
    for epoch in range(epochs):
        total, count = 0.0, 0
        mix_rng = np.random.default_rng(seed + 7919 * (epoch + 1))
        for inputs, labels, teacher_out in _batches(data.train, targets, batch_size, seed + epoch):
            tensors = [to_tensor(a, device) for a in inputs]
            target = None if labels is None else [torch.from_numpy(y).to(device) for y in labels]
            soft = (
                None
                if teacher_out is None
                else [torch.from_numpy(t).to(device) for t in teacher_out]
            )
            clean = len(tensors[0])
            if mixer is not None and all(t.is_floating_point() for t in tensors):
                # The batch and a mixed copy of it, both towards what the teacher makes of them.
                lam = torch.from_numpy(mix_rng.beta(mixup, mixup, size=clean)).float().to(device)
                perm = torch.from_numpy(mix_rng.permutation(clean)).to(device)
                mixed = []
                for t in tensors:
                    w = lam.view(-1, *([1] * (t.dim() - 1)))
                    mixed.append(w * t + (1.0 - w) * t[perm])
                tensors = [torch.cat([t, m]) for t, m in zip(tensors, mixed, strict=True)]
            online = None
            if features is not None:
                online = features.teacher_pass(tensors)
            elif mixer is not None and len(tensors[0]) > clean:
                with torch.no_grad():
                    online = mixer(*tensors)
            outs = _outputs(module(*tensors))
            if online is not None and len(tensors[0]) > clean:
                online = [o.float() for o in _outputs(online)]
                loss = _outputs_loss(
                    [o[:clean] for o in outs], target, [o[:clean] for o in online],
                    temperature, alpha, task,
                ) + _outputs_loss(
                    [o[clean:] for o in outs], None, [o[clean:] for o in online],
                    temperature, alpha, task,
                )  # fmt: skip
            else:
                loss = _outputs_loss(outs, target, soft, temperature, alpha, task)
            if features is not None:
                loss = loss + features.loss().to(loss.device)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if mask_pairs:
                with torch.no_grad():
                    for param, mask in mask_pairs:
                        param.mul_(mask)
            total += float(loss.detach()) * len(tensors[0])
            count += len(tensors[0])
        mean = total / max(count, 1)
        logger.debug("epoch %d/%d loss %.4f", epoch + 1, epochs, mean)
        if validate:
            key, score, _ = _val_score(module, data.val, val_reference, task, device, batch_size)
            log.epoch_scores.append(score)
            if best is None or key > best[0]:
                best = (key, epoch + 1, copy.deepcopy(module.state_dict()), score)
            module.train()
            start = log.start_score
            if can_retry and epoch == 0 and start is not None and score < start - _WORSE_MARGIN:
                if progress is not None:
                    progress(f"epoch 1/{epochs} made it worse at lr {lr:g}", 1 / epochs)
                return best  # the caller retries at a lower learning rate
        if progress is not None:
            progress(f"epoch {epoch + 1}/{epochs} loss {mean:.4f}", (epoch + 1) / epochs)
    return best


def _outputs_loss(
    outs: list[torch.Tensor],
    target: list[torch.Tensor] | None,
    soft: list[torch.Tensor] | None,
    temperature: float,
    alpha: float,
    task: str,
) -> torch.Tensor:
    """The loss over every output: the first in its task's terms, the others towards their own
    targets and the teacher's (:func:`_extra_output_loss`)."""
    loss = _loss(
        outs[0],
        None if target is None else target[0],
        None if soft is None else soft[0],
        temperature,
        alpha,
        task,
    )
    for index, extra in enumerate(outs[1:], start=1):
        loss = loss + _extra_output_loss(
            extra,
            target[index] if target is not None and index < len(target) else None,
            soft[index] if soft is not None and index < len(soft) else None,
        )
    return loss


def _batches(
    split: Split, targets: list[np.ndarray] | None, size: int, seed: int
) -> Iterator[tuple[tuple[np.ndarray, ...], list[np.ndarray] | None, list[np.ndarray] | None]]:
    """(inputs, every target array, every teacher output) of shuffled batches."""
    order = np.random.default_rng(seed).permutation(len(split))
    for start in range(0, len(split), size):
        idx = order[start : start + size]
        labels = (
            None
            if split.labels is None
            else [split.labels[idx], *(y[idx] for y in split.more_labels)]
        )
        yield (
            tuple(a[idx] for a in split.inputs),
            labels,
            None if targets is None else [t[idx] for t in targets],
        )


def _teacher_outputs(
    teacher: nn.Module | None, split: Split, device: torch.device, batch_size: int
) -> list[np.ndarray] | None:
    """Every output of the teacher on ``split``, computed once: every epoch reuses them."""
    if teacher is None:
        return None
    return _predict_all(teacher, split, device, max(batch_size, 128))


def _predict(module: nn.Module, split: Split, device: torch.device, batch_size: int) -> np.ndarray:
    return _predict_all(module, split, device, batch_size)[0]


@torch.no_grad()
def _predict_all(
    module: nn.Module, split: Split, device: torch.device, batch_size: int
) -> list[np.ndarray]:
    was_training = module.training
    module.to(device).eval()
    outs: list[list[np.ndarray]] = []
    for inputs, _ in split.batches(batch_size):
        tensors = [to_tensor(a, device) for a in inputs]
        outs.append([o.float().cpu().numpy() for o in _outputs(module(*tensors))])
    module.train(was_training)
    return [np.concatenate(group) for group in zip(*outs, strict=True)]


def _val_score(
    module: nn.Module,
    split: Split,
    reference: np.ndarray | None,
    task: str,
    device: torch.device,
    batch_size: int,
) -> tuple[float, float, str]:
    """(selection key, score, metric name) on the validation split, higher better for both.

    The score is accuracy with labels, else agreement/cosine/r2 with the teacher's outputs. The key
    the best epoch is chosen by is the score, except for a classifier scored by agreement: top-1
    agreement on a few hundred samples saturates within a few epochs and moves by single samples,
    so keeping its first maximum kept an early, high-learning-rate epoch of a 15-epoch recovery
    (a two-output net's pruned fine-tune kept epoch 2 and scored 2.6 points below the teacher on
    test, its last epoch 0.4). Its key is minus the KL divergence from the teacher's class
    probabilities, which keeps falling while the model still learns.
    """
    outputs = _predict(module, split, device, batch_size)
    if split.labels is None and reference is None:
        return 0.0, 0.0, ""
    if split.labels is not None and task != "classification":
        flat = outputs.reshape(len(outputs), -1)
        mse = -float(np.mean((flat - split.labels.reshape(len(flat), -1)) ** 2))
        return mse, mse, "-mse"
    labels = split.labels if task == "classification" else None
    result = score_outputs(outputs, labels, reference, task)
    if labels is None and task == "classification" and reference is not None:
        return -_kl_divergence(reference, outputs), result.value, result.name
    return result.value, result.value, result.name


def _kl_divergence(teacher: np.ndarray, student: np.ndarray) -> float:
    """Mean KL(softmax(teacher) || softmax(student)) over samples (class scores on the last axis)."""
    t = torch.from_numpy(teacher.reshape(len(teacher), -1)).double()
    s = torch.from_numpy(student.reshape(len(student), -1)).double()
    return float(
        F.kl_div(F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1), log_target=True,
                 reduction="batchmean")
    )  # fmt: skip


def _first(out: torch.Tensor | tuple[torch.Tensor, ...]) -> torch.Tensor:
    return _outputs(out)[0]


def _outputs(out: torch.Tensor | tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """Every output tensor of a forward pass, nested tuples and lists flattened in order."""
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _outputs(o)]
    return [out]


def _extra_output_loss(
    out: torch.Tensor, labels: torch.Tensor | None, teacher_out: torch.Tensor | None
) -> torch.Tensor:
    """The loss of an output after the first: towards its own targets and the teacher's."""
    loss = out.new_zeros(())
    if labels is not None:
        if labels.dim() == 1 and not labels.is_floating_point() and out.dim() == 2:
            loss = loss + F.cross_entropy(out, labels)
        else:
            loss = loss + F.mse_loss(out.float(), labels.float().view_as(out))
    if teacher_out is not None:
        a = out.reshape(len(out), -1).float()
        b = teacher_out.reshape(len(teacher_out), -1).float()
        loss = loss + F.mse_loss(a, b) / b.square().mean().clamp_min(1e-8)
    return loss


def _loss(
    out: torch.Tensor,
    labels: torch.Tensor | None,
    teacher_out: torch.Tensor | None,
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
    if teacher_out is None:
        if hard is None:
            raise CompressionError("no labels and no teacher: nothing to train towards")
        return hard
    soft = fidelity_loss(out, teacher_out, task, temperature)
    return soft if hard is None else alpha * soft + (1.0 - alpha) * hard


def fidelity_loss(
    out: torch.Tensor, teacher_out: torch.Tensor, task: str, temperature: float = 4.0
) -> torch.Tensor:
    """How far ``out`` is from the teacher's outputs, in the terms the task is scored in."""
    if task == "classification":
        return (
            F.kl_div(
                F.log_softmax(out / temperature, dim=-1),
                F.softmax(teacher_out / temperature, dim=-1),
                reduction="batchmean",
            )
            * temperature**2
        )
    a = out.reshape(len(out), -1).float()
    b = teacher_out.reshape(len(teacher_out), -1).float()
    mse = F.mse_loss(a, b)
    if task == "embedding":
        # Cosine is what an embedding is scored by; the relative MSE keeps its scale from drifting.
        cosine = F.cosine_similarity(a, b, dim=1, eps=1e-8).mean()
        return (1.0 - cosine) + mse / b.square().mean().clamp_min(1e-8)
    return mse


__all__ = ["FitLog", "Progress", "fidelity_loss", "fit", "train_device"]
