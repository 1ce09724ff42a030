"""Training steps: knowledge distillation into a fresh student, and fine-tuning to recover accuracy.

Both train on a CUDA device when the host has one (host.train.fit decides) and bring the module back
to the CPU, where graph surgery and export happen. The teacher of ``distill`` is the model the step
receives, so ``prune_channels -> distill`` distills the pruned model; without labels the loss is
fidelity to the teacher.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import TYPE_CHECKING

from host.compress.config import Distill, FineTune
from host.compress.handlers.base import cpu_copy, handles, param_count, with_module
from host.errors import CompressionError, ModelSpecError

if TYPE_CHECKING:
    from host.compress.context import CompressContext
    from host.models import ModelBundle

logger = logging.getLogger(__name__)


def build_student(teacher: ModelBundle, student: float | str) -> ModelBundle:
    """The untrained student a Distill step describes, shaped for the teacher's inputs and outputs."""
    from host.models import load_model

    if isinstance(student, (int, float)):
        spec, width = teacher.factory, teacher.width * float(student)
        kwargs: dict[str, object] = {"width": width}
    else:
        spec = student if ":" in student else f"builtin:{student}"
        kwargs = {}
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
    return dataclasses.replace(bundle, example_inputs=teacher.example_inputs)


@handles(Distill)
def apply_distill(bundle: ModelBundle, cfg: Distill, ctx: CompressContext) -> ModelBundle:
    from host.train import fit

    student = build_student(bundle, cfg.student)
    teacher = cpu_copy(bundle.module).eval()
    trained = fit(
        cpu_copy(student.module),
        ctx.data,
        cfg.epochs,
        cfg.lr,
        teacher=teacher,
        temperature=cfg.temperature,
        alpha=cfg.alpha,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        task=bundle.task,
        progress=lambda label, frac: ctx.report(f"distill {label}", frac),
    )
    ctx.note(
        "distilled %s (%d params) into %s width %.3g (%d params), %d epoch(s), T=%g, alpha=%g",
        bundle.name,
        param_count(bundle.module),
        student.name,
        student.width,
        param_count(student.module),
        cfg.epochs,
        cfg.temperature,
        cfg.alpha,
    )
    result = dataclasses.replace(student, module=trained.cpu().eval())
    return result


@handles(FineTune)
def apply_finetune(bundle: ModelBundle, cfg: FineTune, ctx: CompressContext) -> ModelBundle:
    from host.train import fit

    # Without labels there is nothing to fit but the original model's outputs.
    use_teacher = cfg.use_teacher or ctx.data.train.labels is None
    teacher = cpu_copy(ctx.teacher.module).eval() if use_teacher else None
    trained = fit(
        cpu_copy(bundle.module),
        ctx.data,
        cfg.epochs,
        cfg.lr,
        teacher=teacher,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        task=bundle.task,
        progress=lambda label, frac: ctx.report(f"finetune {label}", frac),
    )
    ctx.note(
        "fine-tuned %d epoch(s) at lr %g%s",
        cfg.epochs,
        cfg.lr,
        " guided by the original model" if teacher is not None else "",
    )
    return with_module(bundle, trained.cpu().eval())
