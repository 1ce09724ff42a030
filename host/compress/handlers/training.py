"""Training steps: knowledge distillation into a fresh student, and fine-tuning to recover accuracy.

Both train on a CUDA device when the host has one (host.train.fit decides) and bring the module back
to the CPU, where graph surgery and export happen. The teacher of ``distill`` is the model the step
receives, so ``prune_channels -> distill`` distills the pruned model; without labels the loss is
fidelity to the teacher.
Without labels every retraining step trains towards the uncompressed (or incoming) model's outputs:
softened KL for classifiers, cosine plus relative MSE for embeddings, MSE for regressors
(host.train.fidelity_loss), and keeps the best validation state, the starting one included.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from host.compress.config import Distill, FineTune
from host.compress.handlers.base import cpu_copy, handles, head_modules, param_count, with_module
from host.errors import CompressionError, ModelSpecError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.compress.context import CompressContext
    from host.models import ModelBundle
    from host.train import FitLog

logger = logging.getLogger(__name__)

# Recovery steps retry at a tenth of the learning rate when their first epoch makes things worse.
RECOVERY_LR_RETRIES = 2

# Training samples the feature adapters are first fitted on (least squares).
FEATURE_FIT_SAMPLES = 256

# A student pruned harder than this keeps too few channels to learn from its teacher.
_MAX_STUDENT_PRUNING = 0.9


def _factory_takes_width(spec: str) -> bool:
    """Whether the factory behind ``spec`` names a ``width`` parameter. A factory taking only
    ``**kwargs`` (timm.create_model) would pass it to a model class that does not know it."""
    import inspect

    from host.models import MODELS, resolve_factory, split_spec_params
    from host.models import hf as _hf  # noqa: F401 - registers the builtins
    from host.models import zoo as _zoo  # noqa: F401

    base, _ = split_spec_params(spec)
    try:
        if base.startswith("builtin:"):
            factory = MODELS.get(base.removeprefix("builtin:"))
        else:
            factory = resolve_factory(base, what="model")
    except Exception:  # noqa: BLE001 - a bundle built in code has no factory to call again
        return False
    return "width" in inspect.signature(factory).parameters


def build_student(teacher: ModelBundle, student: float | str) -> tuple[ModelBundle, str]:
    """The student a Distill step describes, shaped for the teacher's inputs and outputs, and how
    it was made (one sentence for the step notes).

    A width multiplier builds the teacher's own factory at that width when the factory takes
    ``width``; otherwise (a torchvision/timm/transformers factory, a model built in code) the
    student is the teacher structurally pruned to that width, keeping the surviving weights.
    """
    from host.models import load_model

    if isinstance(student, (int, float)):
        width = float(student)
        if not 0 < width < 1:
            raise CompressionError(
                f"distill student width {width:g} would not be smaller than the teacher; give a "
                "multiplier below 1 (e.g. 0.5) or a model spec"
            )
        if _factory_takes_width(teacher.factory):
            spec = teacher.factory
            kwargs: dict[str, object] = {"width": teacher.width * width}
            how = f"{teacher.factory} built at width {teacher.width * width:.3g}"
        else:
            pruned = _pruned_student(teacher, width)
            return pruned, (
                f"{teacher.name} structurally pruned to width {width:g} (its factory takes no "
                "width; surviving weights kept)"
            )
    else:
        spec = student if ":" in student else f"builtin:{student}"
        kwargs = {}
        how = spec
    if spec.startswith("builtin:"):
        # Zoo models take their shape from kwargs; match the teacher's data rather than the defaults.
        kwargs["input_shape"] = tuple(teacher.example_inputs[0].shape[1:])
        if teacher.num_classes is not None:
            kwargs["num_classes"] = teacher.num_classes
    try:
        bundle = load_model(spec, **kwargs)
    except ModelSpecError as exc:
        raise CompressionError(
            f"cannot build the distillation student from {spec!r}: {exc}"
        ) from exc
    if len(bundle.example_inputs) != len(teacher.example_inputs):
        raise CompressionError(
            f"student {spec!r} takes {len(bundle.example_inputs)} input(s) but the teacher takes "
            f"{len(teacher.example_inputs)}; pick a student with the same inputs"
        )
    return dataclasses.replace(bundle, example_inputs=teacher.example_inputs), how


def _pruned_student(teacher: ModelBundle, width: float) -> ModelBundle:
    """The teacher pruned to ``width``: at least ``1 - width`` of each prunable group's channels go,
    more where needed until the student holds at most ``width`` of the teacher's parameters, as a
    width multiplier promises. A transformer loses residual width too where its output allows."""
    from host.compress.config import ChannelPrune
    from host.compress.handlers.pruning import find_attention_blocks, structured_prune

    target = width * param_count(teacher.module)
    ratio = 1.0 - width
    # A transformer keeps its residual width under head/FFN pruning, which leaves a small one (a
    # ViT with few heads) well above ``width`` of its parameters; narrowing the residual stream
    # too makes it a student of that width. A model whose output *is* the residual stream (a
    # sentence encoder) cannot: pruning it would change the output width, so it keeps it.
    hidden = bool(find_attention_blocks(teacher.module))
    while True:
        try:
            cfg = ChannelPrune(ratio=round(ratio, 3), hidden=hidden)
            outcome = structured_prune(teacher.module, teacher.example_inputs, cfg)
        except CompressionError as exc:
            if hidden:
                hidden = False
                continue
            raise CompressionError(
                f"cannot build a width-{width:g} student of {teacher.name}: its factory takes no "
                f"width and structured pruning failed ({exc}); give the student as a model spec, "
                "e.g. Distill(student='path/file.py:small_model')"
            ) from exc
        if param_count(outcome.model) >= param_count(teacher.module):
            # A harder ratio will not find what this one could not.
            raise CompressionError(
                f"cannot build a width-{width:g} student of {teacher.name}: its factory takes no "
                "width and structured pruning removed nothing (no layer it may narrow without "
                "changing the model's inputs or outputs); give the student as a model spec, e.g. "
                "Distill(student='path/file.py:small_model')"
            )
        if param_count(outcome.model) <= target or ratio >= _MAX_STUDENT_PRUNING:
            break
        ratio = min(_MAX_STUDENT_PRUNING, ratio + 0.05)
    return dataclasses.replace(
        teacher,
        module=outcome.model,
        name=f"{teacher.name}_w{width:g}",
        width=teacher.width * width,
    )


@handles(Distill)
def apply_distill(bundle: ModelBundle, cfg: Distill, ctx: CompressContext) -> ModelBundle:
    from host.train import FitLog, fit

    student, how = build_student(bundle, cfg.student)
    teacher_params, student_params = param_count(bundle.module), param_count(student.module)
    if student_params >= teacher_params:
        raise CompressionError(
            f"the distillation student ({how}) has {student_params} parameters, not fewer than "
            f"the teacher's {teacher_params}; choose a smaller student"
        )
    from host.compress.features import FeatureMatch
    from host.metrics import to_tensor

    teacher = cpu_copy(bundle.module).eval()
    learner = cpu_copy(student.module)
    matched = None
    if cfg.features > 0:
        matched = FeatureMatch.build(
            learner,
            teacher,
            bundle.example_inputs,
            cfg.features,
            exclude=head_modules(teacher, bundle.example_inputs),
            samples=tuple(to_tensor(a) for a in ctx.data.train.subset(FEATURE_FIT_SAMPLES).inputs),
        )
    log = FitLog()
    trained = fit(
        learner,
        ctx.data,
        cfg.epochs,
        cfg.lr,
        teacher=teacher,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        task=bundle.task,
        log=log,
        lr_retries=RECOVERY_LR_RETRIES,
        progress=lambda label, frac: ctx.report(f"distill {label}", frac),
        features=matched,
        mixup=cfg.mixup,
    )
    ctx.detail("teacher_params", teacher_params)
    ctx.detail("student_params", student_params)
    ctx.detail("student", how)
    ctx.note(
        "distilled %s (%d params) into %s (%d params, %.2fx fewer), %d epoch(s), T=%g, alpha=%g%s",
        bundle.name,
        teacher_params,
        how,
        student_params,
        teacher_params / student_params,
        cfg.epochs,
        cfg.temperature,
        cfg.alpha,
        "" if ctx.data.train.labels is not None else ", no labels: teacher outputs only",
    )
    if matched is not None:
        ctx.detail("feature_layers", matched.names)
        ctx.note(
            "feature distillation at %d layer(s) (%s) through learned adapters, weight %g",
            len(matched.names),
            ", ".join(matched.names),
            cfg.features,
        )
    elif cfg.features > 0:
        ctx.note("no layer shared with the teacher to match features at: outputs only")
    floats = all(t.is_floating_point() for t in bundle.example_inputs)
    if cfg.mixup > 0 and floats:
        ctx.note(
            "every batch also trained on a mixed copy of it (Beta(%g, %g) per sample) towards the "
            "teacher's outputs on those mixed inputs",
            cfg.mixup,
            cfg.mixup,
        )
    elif cfg.mixup > 0:
        ctx.note("inputs not mixed: the model takes integer inputs (token ids)")
    note_fit(ctx, log, cfg.lr)
    return dataclasses.replace(student, module=trained.cpu().eval())


def note_fit(ctx: CompressContext, log: FitLog, lr: float) -> None:
    ctx.detail("lr_used", log.lr)
    if log.retries:
        ctx.note("lr %g made the model worse in its first epoch; retrained at lr %g", lr, log.lr)
    if log.kept_epoch is not None:
        ctx.detail("kept_epoch", log.kept_epoch)
        ctx.detail("validation", {"metric": log.metric, "start": log.start_score,
                                  "best": log.best_score, "epochs": log.epoch_scores})  # fmt: skip
        if log.kept_epoch == 0:
            ctx.note(
                "no epoch beat the starting weights on validation %s (%.4f); kept them",
                log.metric,
                log.start_score or 0.0,
            )


def sparsity_masks(module: nn.Module) -> dict[str, torch.Tensor]:
    """0/1 masks of the zero weights of every Linear/Conv layer, by parameter name."""
    from torch import nn

    masks = {}
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            zero = layer.weight.detach() == 0
            if bool(zero.any()):
                masks[f"{name}.weight" if name else "weight"] = (~zero).float()
    return masks


@handles(FineTune)
def apply_finetune(bundle: ModelBundle, cfg: FineTune, ctx: CompressContext) -> ModelBundle:
    from host.train import FitLog, fit

    # Without labels there is nothing to fit but the original model's outputs.
    use_teacher = cfg.use_teacher or ctx.data.train.labels is None
    teacher = cpu_copy(ctx.teacher.module).eval() if use_teacher else None
    model = cpu_copy(bundle.module)
    # Fine-tuning a sparsified model would regrow its zeros: keep them zero.
    masks = sparsity_masks(model) if ctx.sparse else None
    log = FitLog()
    trained = fit(
        model,
        ctx.data,
        cfg.epochs,
        cfg.lr,
        teacher=teacher,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        task=bundle.task,
        masks=masks,
        log=log,
        lr_retries=RECOVERY_LR_RETRIES,
        progress=lambda label, frac: ctx.report(f"finetune {label}", frac),
    )
    ctx.note(
        "fine-tuned %d epoch(s) at lr %g%s%s",
        cfg.epochs,
        log.lr,
        " guided by the original model" if teacher is not None else "",
        " (no labels: its outputs are the targets)" if ctx.data.train.labels is None else "",
    )
    if masks:
        ctx.note("kept the %d sparse layer(s) sparse while fine-tuning", len(masks))
    note_fit(ctx, log, cfg.lr)
    return with_module(bundle, trained.cpu().eval())
