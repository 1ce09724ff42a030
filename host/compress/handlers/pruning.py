"""Pruning: unstructured magnitude pruning and structured channel pruning (torch-pruning).

Unstructured pruning only zeroes weights: the tensors keep their shape, so a dense TFLite/ONNX file
is exactly as large and as slow as before unless the format or kernels exploit sparsity (the step
log says so). Structured pruning removes whole channels through the dependency graph, so the
exported file, the MACs and the latency really drop.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from host.compress.config import ChannelPrune, UnstructuredPrune
from host.compress.handlers.base import cpu_copy, handles, head_module, param_count, with_module
from host.errors import CompressionError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.compress.context import CompressContext
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

_PRUNABLE_WEIGHTS = ("Linear", "Conv1d", "Conv2d", "Conv3d")


def sparsity(module: nn.Module) -> float:
    """Fraction of zero weights over the Linear/Conv weights of ``module``."""
    total = zeros = 0
    for layer in module.modules():
        if type(layer).__name__ in _PRUNABLE_WEIGHTS:
            total += layer.weight.numel()
            zeros += int((layer.weight == 0).sum().item())
    return zeros / total if total else 0.0


def magnitude_prune(module: nn.Module, amount: float, scope: str) -> nn.Module:
    """A copy of ``module`` with the smallest ``amount`` of Linear/Conv weights set to zero."""
    import torch.nn.utils.prune as torch_prune

    model = cpu_copy(module)
    targets = [
        (layer, "weight") for layer in model.modules() if type(layer).__name__ in _PRUNABLE_WEIGHTS
    ]
    if not targets:
        raise CompressionError("prune_unstructured found no Linear/Conv layers to prune")
    if scope == "global":
        torch_prune.global_unstructured(
            targets, pruning_method=torch_prune.L1Unstructured, amount=amount
        )
    else:
        for layer, attr in targets:
            torch_prune.l1_unstructured(layer, attr, amount=amount)
    # Make the zeros permanent: exporters and fine-tuning should see plain weights, not masks.
    for layer, attr in targets:
        torch_prune.remove(layer, attr)
    return model


@handles(UnstructuredPrune)
def apply_unstructured(
    bundle: ModelBundle, cfg: UnstructuredPrune, ctx: CompressContext
) -> ModelBundle:
    model = magnitude_prune(bundle.module, cfg.amount, cfg.scope)
    achieved = sparsity(model)
    ctx.detail("sparsity", round(achieved, 4))
    ctx.note("zeroed %.1f%% of Linear/Conv weights (%s magnitude)", 100 * achieved, cfg.scope)
    ctx.note(
        "unstructured sparsity does not shrink the dense export or its latency; "
        "only a sparse-aware format or runtime (or compression of the file) would benefit"
    )
    return with_module(bundle, model)


def _importance(kind: str) -> object:
    import torch_pruning as tp

    if kind == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if kind == "bn":
        return tp.importance.BNScaleImportance()
    if kind == "random":
        return tp.importance.RandomImportance()
    return tp.importance.MagnitudeImportance(p=2)


def channel_prune(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    cfg: ChannelPrune,
    ignored: list[nn.Module] | None = None,
) -> nn.Module:
    """A copy of ``module`` with ``cfg.ratio`` of the channels of every prunable group removed.

    The output head is never pruned (its width is the number of classes / output features).
    """
    import torch
    import torch_pruning as tp

    model = cpu_copy(module).eval()
    inputs = tuple(t.cpu() for t in example_inputs)
    head = head_module(model, inputs)
    ignored_layers = ([head] if head is not None else []) + list(ignored or [])
    try:
        pruner = tp.pruner.BasePruner(
            model,
            inputs if len(inputs) > 1 else inputs[0],
            importance=_importance(cfg.importance),
            pruning_ratio=cfg.ratio,
            global_pruning=cfg.global_pruning,
            ignored_layers=ignored_layers,
            round_to=cfg.round_to,
        )
        pruner.step()
    except Exception as exc:  # torch-pruning raises bare Python errors from its graph tracer
        raise CompressionError(
            f"structured pruning failed while tracing/pruning the model: {type(exc).__name__}: "
            f"{exc}; try prune_unstructured or lowrank for this architecture"
        ) from exc
    with torch.no_grad():
        try:
            model(*inputs)
        except Exception as exc:
            raise CompressionError(
                f"the channel-pruned model no longer runs ({exc}); this architecture has a "
                "dependency torch-pruning cannot follow"
            ) from exc
    return model


@handles(ChannelPrune)
def apply_channel_prune(
    bundle: ModelBundle, cfg: ChannelPrune, ctx: CompressContext
) -> ModelBundle:
    before = param_count(bundle.module)
    model = channel_prune(bundle.module, bundle.example_inputs, cfg)
    after = param_count(model)
    if after >= before:
        raise CompressionError(
            f"prune_channels removed nothing from {bundle.name}: every prunable layer is the "
            "output head or is ignored"
        )
    ctx.note(
        "removed %.0f%% of channels (%s importance): parameters %d -> %d",
        100 * cfg.ratio,
        cfg.importance,
        before,
        after,
    )
    return with_module(bundle, model)
