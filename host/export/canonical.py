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

:func:`fold_layer_scales`: a per-channel scale multiplying a Linear's output (ConvNeXt's
``layer_scale_parameter``, the LayerScale of CaiT or DINOv2) is folded into the Linear's weights
and bias, and the scale set to ones. After a GELU, on the 1x1 map of ConvNeXt's last stage, the
converter fused the scale's multiplication with the Linear into a BATCH_MATMUL of rank 4 it then
refused ("'tfl.batch_matmul' op found invalid output rank, expected 3 but got 4": fp32, fp16 and
dynamic int8 of transformers' ConvNeXt all failed); a multiplication by ones it removes.

:func:`flatten_linear_inputs`: a Linear applied to a 4-D tensor (ConvNeXt's pointwise layers
run on channels-last ``(N, H, W, C)`` maps) with a non-zero bias, after a GELU, on a 1x1 map,
was converted to the same refused rank-4 BATCH_MATMUL (a freshly initialised ConvNeXt, whose
biases are zero, converted; the trained one did not). The same layer applied to the rows of a 2-D
view of its input, reshaped back, converts to a FULLY_CONNECTED.

:func:`linearize_recurrent` (host.models.recurrent): GRU, LSTM and RNN layers in a form made of
Linears, which the int8 quantizer annotates and every runtime unrolls.

:func:`canonicalize` applies them all; the exporters and QAT's preparation call it on their own copy.
"""

from __future__ import annotations

import functools
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


@functools.lru_cache(maxsize=1)
def _rowwise_linear_class() -> type:
    from torch import nn

    class RowwiseLinear(nn.Module):
        """A Linear applied to the rows of a 2-D view of its input, reshaped back."""

        def __init__(self, linear: nn.Linear) -> None:
            super().__init__()
            self.linear = linear

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            rows = self.linear(x.reshape(-1, x.shape[-1]))
            return rows.reshape(*x.shape[:-1], rows.shape[-1])

    return RowwiseLinear


def flatten_linear_inputs(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str]:
    """Wrap, in place, every Linear that sees an input of more than 3 dimensions on ``examples`` so
    that it multiplies a 2-D view of it (the same numbers); returns the names of the layers."""
    import torch
    from torch import nn

    deep: set[str] = set()
    hooks = []
    for name, layer in module.named_modules():
        if isinstance(layer, nn.Linear) and name:

            def record(_layer: nn.Module, args: tuple, name: str = name) -> None:
                if args and isinstance(args[0], torch.Tensor) and args[0].dim() > 3:
                    deep.add(name)

            hooks.append(layer.register_forward_pre_hook(record))
    if not hooks:
        return []
    try:
        with torch.no_grad():
            module(*examples)
    finally:
        for hook in hooks:
            hook.remove()
    wrapper = _rowwise_linear_class()
    for name in sorted(deep):
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, wrapper(getattr(parent, child)))
    if deep:
        logger.info("Linear layers on 2-D views of their N-D inputs: %d layers", len(deep))
    return sorted(deep)


def fold_layer_scales(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str]:
    """Fold, in place, every 1-D parameter that only multiplies the output of one Linear (its
    length that Linear's output width) into that Linear, and set it to ones; returns the names of
    the scales folded. Found on a torch.export trace; a model that does not trace is left as is."""
    import torch
    from torch import nn

    owned = {
        id(p)
        for m in module.modules()
        if isinstance(
            m,
            (
                nn.Linear,
                nn.modules.conv._ConvNd,
                nn.LayerNorm,
                nn.modules.batchnorm._NormBase,
                nn.GroupNorm,
                nn.Embedding,
            ),
        )
        for p in m.parameters(recurse=False)
    }
    if not any(p.dim() == 1 and id(p) not in owned for p in module.parameters()):
        return []
    try:
        program = torch.export.export(module, examples)
    except Exception as exc:  # noqa: BLE001 - nothing to fold in what cannot be traced
        logger.debug("layer scales not folded: the model does not trace (%s)", exc)
        return []
    params = program.graph_signature.inputs_to_parameters
    linear_ops = {torch.ops.aten.linear.default}
    mul_ops = {torch.ops.aten.mul.Tensor}
    folded: list[str] = []
    scale_users: dict[str, int] = {}
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in params:
            scale_users[params[node.name]] = len(node.users)
    for node in program.graph.nodes:
        if node.op != "call_function" or node.target not in linear_ops or len(node.users) != 1:
            continue
        (user,) = node.users
        if user.op != "call_function" or user.target not in mul_ops:
            continue
        other = user.args[1] if user.args[0] is node else user.args[0]
        weight = node.args[1]
        if getattr(other, "op", None) != "placeholder" or other.name not in params:
            continue
        if getattr(weight, "op", None) != "placeholder" or weight.name not in params:
            continue
        scale_name, weight_name = params[other.name], params[weight.name]
        if scale_users.get(scale_name) != 1 or scale_name in folded:
            continue
        scale = module.get_parameter(scale_name)
        linear = module.get_submodule(weight_name.rpartition(".")[0])
        if not isinstance(linear, nn.Linear) or tuple(scale.shape) != (linear.out_features,):
            continue
        with torch.no_grad():
            linear.weight.mul_(scale[:, None])
            if linear.bias is not None:
                linear.bias.mul_(scale)
            scale.fill_(1.0)
        folded.append(scale_name)
    if folded:
        logger.info("folded %d layer scale(s) into their Linear layers", len(folded))
    return folded


def canonicalize(module: nn.Module, examples: tuple[torch.Tensor, ...]) -> list[str]:
    """Apply every rewrite of this module to ``module`` in place; returns the layers changed."""
    from host.models.recurrent import linearize_recurrent

    return (
        make_global_pools_adaptive(module, examples)
        + number_conv_padding(module)
        + fold_layer_scales(module, examples)
        + linearize_recurrent(module)
        + flatten_linear_inputs(module, examples)
    )


__all__ = [
    "canonicalize",
    "flatten_linear_inputs",
    "fold_layer_scales",
    "make_global_pools_adaptive",
    "number_conv_padding",
]
