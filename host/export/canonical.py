"""Rewrites that keep what a model computes and spare the converters a pathological graph.

:func:`make_global_pools_adaptive`: a "global" pooling layer written as a pool whose window is
larger than any input it will see -- transformers' EfficientNet pools with
``nn.AvgPool2d(1280, ceil_mode=True)`` -- is lowered by litert-torch as written: the input is
padded to 1280x1280 before an AVERAGE_POOL_2D, a 1x1280x1280x1280 float tensor. The EfficientNet-B0
file then needed 8 GB of memory on the board and counted 1 G MACs at 32 px (8.5 M without the
pad). ``AdaptiveAvgPool2d(1)`` computes the same mean, and converts to a MEAN over the spatial axes.

:func:`number_conv_padding`: a convolution written with ``padding="same"`` or ``"valid"`` (every
convolution of transformers' EfficientNet) traces to the ``aten.conv2d.padding`` overload, which the
PT2E quantizers do not annotate (they match ``aten.conv2d.default``) and torchao's conv/batch-norm
fusion does not match: full int8 of EfficientNet-B0 left all 81 convolutions float and the file
1.01x smaller than fp32. The same padding written as numbers traces to ``conv2d.default``.

:func:`canonicalize` applies both; the exporters and QAT's preparation call it on their own copy.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

logger = logging.getLogger(__name__)


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def make_global_pools_adaptive(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str]:
    """Replace, in place, every AvgPool2d/MaxPool2d that pools its whole input into one value per
    channel (no padding, window at least as large as the input it sees on ``examples``) with
    AdaptiveAvgPool2d(1)/AdaptiveMaxPool2d(1); returns the names of the layers replaced.

    The same numbers come out: with no padding the average divides by the input's own height
    times width (PyTorch clips a window that overhangs the input), and the maximum is the maximum.
    """
    import torch
    from torch import nn

    seen: dict[str, tuple[int, int]] = {}
    hooks = []
    for name, layer in module.named_modules():
        if isinstance(layer, (nn.AvgPool2d, nn.MaxPool2d)):

            def record(
                _layer: nn.Module, args: tuple, _out: torch.Tensor, name: str = name
            ) -> None:
                # The largest input a layer called more than once sees decides.
                height, width = seen.get(name, (0, 0))
                seen[name] = (max(height, args[0].shape[-2]), max(width, args[0].shape[-1]))

            hooks.append(layer.register_forward_hook(record))
    if not hooks:
        return []
    try:
        with torch.no_grad():
            module(*examples)
    finally:
        for hook in hooks:
            hook.remove()
    replaced = []
    for name, (height, width) in seen.items():
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        layer = getattr(parent, child)
        kernel, padding = _pair(layer.kernel_size), _pair(layer.padding)
        if padding != (0, 0) or kernel[0] < height or kernel[1] < width:
            continue
        if isinstance(layer, nn.AvgPool2d):
            if layer.divisor_override is not None:
                continue
            setattr(parent, child, nn.AdaptiveAvgPool2d(1))
        else:
            if _pair(layer.dilation) != (1, 1) or layer.return_indices:
                continue
            setattr(parent, child, nn.AdaptiveMaxPool2d(1))
        replaced.append(name)
    if replaced:
        logger.info("pooled globally with adaptive pooling: %s", ", ".join(replaced))
    return replaced


def number_conv_padding(module: nn.Module) -> list[str]:
    """Write, in place, the string padding of every zero-padded convolution as numbers: "valid" is
    0, and "same" is ``dilation * (kernel - 1) // 2`` per side where that is symmetric (an odd
    effective kernel; PyTorch pads an even one more on one side, which one number cannot say, so
    such a layer is left as it is). Returns the names of the layers rewritten."""
    from torch import nn

    rewritten = []
    for name, layer in module.named_modules():
        if not isinstance(layer, nn.modules.conv._ConvNd) or not isinstance(layer.padding, str):
            continue
        if layer.padding_mode != "zeros":
            # Other modes pad with F.pad first and call the convolution with padding 0 already.
            continue
        if layer.padding == "valid":
            layer.padding = (0,) * len(layer.kernel_size)
        else:
            spans = [d * (k - 1) for d, k in zip(layer.dilation, layer.kernel_size, strict=True)]
            if any(span % 2 for span in spans):
                continue
            layer.padding = tuple(span // 2 for span in spans)
        rewritten.append(name)
    if rewritten:
        logger.info("wrote string convolution padding as numbers: %d layers", len(rewritten))
    return rewritten


def canonicalize(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str]:
    """Apply every rewrite of this module to ``module`` in place; returns the layers changed."""
    return make_global_pools_adaptive(module, examples) + number_conv_padding(module)


__all__ = ["canonicalize", "make_global_pools_adaptive", "number_conv_padding"]
