"""Low-rank factorization: SVD of Linear and Conv2d layers, or Tucker-2 of Conv2d layers.

A Linear ``W (m x n)`` becomes ``Linear(n -> k) -> Linear(k -> m)``; a Conv2d becomes a ``k x k``
conv into ``r`` channels followed by a 1x1 conv (SVD), or 1x1 -> ``k x k`` -> 1x1 with ranks on both
channel modes (Tucker-2). The rank is chosen per layer, either as the smallest one that keeps a
fraction of the squared singular values (``energy``) or the largest one whose factors hold at most
``ratio`` of the layer's parameters. A layer the chosen rank would not shrink is left alone and the
step log says so, because a "factorized" layer with more parameters is a pessimization.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host.compress.config import LowRank
from host.compress.handlers.base import cpu_copy, handles, head_modules, param_count, with_module
from host.errors import CompressionError
from shared.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.compress.context import CompressContext
    from host.models import ModelBundle

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FactorizedLayer:
    name: str
    kind: str
    ranks: tuple[int, ...]
    params_before: int
    params_after: int


@dataclass(frozen=True)
class SkippedLayer:
    name: str
    reason: str


# What model code reads of a layer besides its weights, kept on the module that replaces it.
_CONV_ATTRIBUTES = (
    "in_channels", "out_channels", "kernel_size", "stride", "padding", "dilation", "groups",
    "padding_mode",
)  # fmt: skip
_LINEAR_ATTRIBUTES = ("in_features", "out_features")


@functools.lru_cache(maxsize=1)
def _factorized_class() -> type:
    from torch import nn

    class Factorized(nn.Sequential):
        """The factors of one layer, in order, still answering for the layer they replace (its
        stride, kernel size, channel or feature counts): transformers' MobileNetV2 computes its
        TF-style "SAME" padding from its convolutions' stride and kernel size, and a plain
        Sequential there made every one of its convolutions unfactorizable."""

    return Factorized


def _factorized(layer: nn.Module, *factors: nn.Module) -> nn.Module:
    from torch import nn

    module = _factorized_class()(*factors)
    attributes = _LINEAR_ATTRIBUTES if isinstance(layer, nn.Linear) else _CONV_ATTRIBUTES
    for name in attributes:
        setattr(module, name, getattr(layer, name))
    return module


def _bias_count(layer: nn.Module) -> int:
    return 0 if layer.bias is None else layer.bias.numel()


def _rank_for_energy(singular_values: torch.Tensor, energy: float) -> int:
    import torch

    squared = singular_values.double() ** 2
    cumulative = torch.cumsum(squared, 0) / squared.sum().clamp_min(1e-30)
    return int(torch.searchsorted(cumulative, torch.tensor(energy, dtype=torch.float64)).item()) + 1


def _svd_rank(weight_2d: torch.Tensor, bias: int, cfg: LowRank) -> tuple[int, torch.Tensor]:
    import torch

    m, n = weight_2d.shape
    singular_values = torch.linalg.svdvals(weight_2d.double())
    if cfg.energy is not None:
        rank = _rank_for_energy(singular_values, cfg.energy)
    else:
        # Largest k with k*(m+n) + bias <= ratio * (m*n + bias).
        rank = math.floor((cfg.ratio * (m * n + bias) - bias) / (m + n))
    return min(rank, min(m, n)), singular_values


def _svd_factors(weight_2d: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(first, second) with second @ first ~= weight_2d; singular values split evenly."""
    import torch

    u, s, vh = torch.linalg.svd(weight_2d.double(), full_matrices=False)
    root = torch.sqrt(s[:rank])
    first = (root[:, None] * vh[:rank]).to(weight_2d.dtype)
    second = (u[:, :rank] * root[None, :]).to(weight_2d.dtype)
    return first, second


def _factorize_linear(
    layer: nn.Linear, cfg: LowRank
) -> tuple[nn.Module | None, tuple[int, ...], str]:
    from torch import nn

    weight = layer.weight.detach()
    m, n = weight.shape
    bias = _bias_count(layer)
    rank, _ = _svd_rank(weight, bias, cfg)
    if rank < 1:
        return None, (), f"ratio {cfg.ratio} leaves no rank for a {m}x{n} layer"
    if rank * (m + n) >= m * n:
        return None, (rank,), f"rank {rank} of {m}x{n} would not shrink it"
    first, second = _svd_factors(weight, rank)
    down = nn.Linear(n, rank, bias=False)
    up = nn.Linear(rank, m, bias=layer.bias is not None)
    down.weight.data.copy_(first)
    up.weight.data.copy_(second)
    if layer.bias is not None:
        up.bias.data.copy_(layer.bias.detach())
    return _factorized(layer, down, up), (rank,), ""


def _factorize_conv_svd(
    layer: nn.Conv2d, cfg: LowRank
) -> tuple[nn.Module | None, tuple[int, ...], str]:
    from torch import nn

    weight = layer.weight.detach()
    c_out, c_in, kh, kw = weight.shape
    flat = weight.reshape(c_out, c_in * kh * kw)
    bias = _bias_count(layer)
    rank, _ = _svd_rank(flat, bias, cfg)
    if rank < 1:
        return None, (), f"ratio {cfg.ratio} leaves no rank for conv {c_in}->{c_out} {kh}x{kw}"
    if rank * (c_out + c_in * kh * kw) >= c_out * c_in * kh * kw:
        return None, (rank,), f"rank {rank} would not shrink conv {c_in}->{c_out} {kh}x{kw}"
    first, second = _svd_factors(flat, rank)
    spatial = nn.Conv2d(
        c_in,
        rank,
        (kh, kw),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        padding_mode=layer.padding_mode,
        bias=False,
    )
    pointwise = nn.Conv2d(rank, c_out, 1, bias=layer.bias is not None)
    spatial.weight.data.copy_(first.reshape(rank, c_in, kh, kw))
    pointwise.weight.data.copy_(second.reshape(c_out, rank, 1, 1))
    if layer.bias is not None:
        pointwise.bias.data.copy_(layer.bias.detach())
    return _factorized(layer, spatial, pointwise), (rank,), ""


def _tucker2_ranks(layer: nn.Conv2d, cfg: LowRank) -> tuple[int, int]:
    import torch

    weight = layer.weight.detach().double()
    c_out, c_in, kh, kw = weight.shape
    if cfg.energy is not None:
        s_out = torch.linalg.svdvals(weight.reshape(c_out, -1))
        s_in = torch.linalg.svdvals(weight.permute(1, 0, 2, 3).reshape(c_in, -1))
        return _rank_for_energy(s_in, cfg.energy), _rank_for_energy(s_out, cfg.energy)
    # Ranks proportional to the channel counts: r_in = a*c_in, r_out = a*c_out, with
    # c_in*r_in + r_in*r_out*k + r_out*c_out + bias <= ratio * (c_in*c_out*k + bias).
    k = kh * kw
    bias = _bias_count(layer)
    budget = cfg.ratio * (c_in * c_out * k + bias) - bias
    qa, qb = c_in * c_out * k, c_in * c_in + c_out * c_out
    a = (-qb + math.sqrt(qb * qb + 4 * qa * budget)) / (2 * qa) if budget > 0 else 0.0
    r_in, r_out = max(1, math.floor(a * c_in)), max(1, math.floor(a * c_out))
    while r_in * c_in + r_in * r_out * k + r_out * c_out > budget and (r_in > 1 or r_out > 1):
        if r_in >= r_out and r_in > 1:
            r_in -= 1
        else:
            r_out -= 1
    return min(r_in, c_in), min(r_out, c_out)


def _factorize_conv_tucker2(
    layer: nn.Conv2d, cfg: LowRank
) -> tuple[nn.Module | None, tuple[int, ...], str]:
    import torch
    from torch import nn

    weight = layer.weight.detach()
    c_out, c_in, kh, kw = weight.shape
    if kh * kw == 1:
        # A 1x1 conv is a matrix; Tucker-2 would add a needless third layer.
        return _factorize_conv_svd(layer, cfg)
    r_in, r_out = _tucker2_ranks(layer, cfg)
    after = c_in * r_in + r_in * r_out * kh * kw + r_out * c_out
    if after >= c_in * c_out * kh * kw:
        return None, (r_in, r_out), f"ranks ({r_in}, {r_out}) would not shrink conv {c_in}->{c_out}"
    if cfg.ratio is not None and after + _bias_count(layer) > cfg.ratio * (
        c_in * c_out * kh * kw + _bias_count(layer)
    ):
        return None, (r_in, r_out), f"ratio {cfg.ratio} is below what ranks of 1 give for this conv"
    w = weight.double()
    u_out = torch.linalg.svd(w.reshape(c_out, -1), full_matrices=False)[0][:, :r_out]
    u_in = torch.linalg.svd(w.permute(1, 0, 2, 3).reshape(c_in, -1), full_matrices=False)[0][
        :, :r_in
    ]
    core = torch.einsum("oihw,or,is->rshw", w, u_out, u_in)
    squeeze = nn.Conv2d(c_in, r_in, 1, bias=False)
    spatial = nn.Conv2d(
        r_in,
        r_out,
        (kh, kw),
        stride=layer.stride,
        padding=layer.padding,
        dilation=layer.dilation,
        padding_mode=layer.padding_mode,
        bias=False,
    )
    expand = nn.Conv2d(r_out, c_out, 1, bias=layer.bias is not None)
    squeeze.weight.data.copy_(u_in.T.reshape(r_in, c_in, 1, 1).to(weight.dtype))
    spatial.weight.data.copy_(core.to(weight.dtype))
    expand.weight.data.copy_(u_out.reshape(c_out, r_out, 1, 1).to(weight.dtype))
    if layer.bias is not None:
        expand.bias.data.copy_(layer.bias.detach())
    return _factorized(layer, squeeze, spatial, expand), (r_in, r_out), ""


def _selected(name: str, layer: nn.Module, cfg: LowRank) -> bool:
    from torch import nn

    if isinstance(cfg.layers, tuple):
        return name in cfg.layers
    if cfg.layers == "linear":
        return isinstance(layer, nn.Linear)
    if cfg.layers == "conv":
        return isinstance(layer, nn.Conv2d)
    return True


def _forward_error(model: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> str | None:
    import torch

    try:
        with torch.no_grad():
            model.eval()(*example_inputs)
    except Exception as exc:  # noqa: BLE001 - any failure means this replacement cannot stay
        return f"{type(exc).__name__}: {exc}"[:160]
    return None


def factorize_module(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...], cfg: LowRank
) -> tuple[nn.Module, list[FactorizedLayer], list[SkippedLayer]]:
    """Return a factorized copy of ``module`` plus what was and was not factorized. Recurrent
    layers (GRU, LSTM, RNN) are first written in linear form, so that their input and recurrent
    matrices (``rnn.cells.0.ih``, ``rnn.cells.0.hh``, ...) are factorized like any Linear."""
    from torch import nn

    from host.models.recurrent import linearize_recurrent

    model = cpu_copy(module)
    linearize_recurrent(model)
    modules = dict(model.named_modules())
    if isinstance(cfg.layers, tuple):
        missing = [n for n in cfg.layers if n not in modules]
        if missing:
            candidates = [n for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
            raise ConfigError(
                f"lowrank.layers names unknown module(s) {missing}; factorizable layers are: "
                f"{', '.join(candidates) or 'none'}"
            )
    heads = head_modules(model, example_inputs) if cfg.skip_classifier else []
    done: list[FactorizedLayer] = []
    skipped: list[SkippedLayer] = []
    for name, layer in list(modules.items()):
        if not isinstance(layer, (nn.Linear, nn.Conv2d)) or not _selected(name, layer, cfg):
            continue
        if any(layer is head for head in heads):
            skipped.append(SkippedLayer(name, "output head (skip_classifier=true)"))
            continue
        if isinstance(layer, nn.Conv2d) and layer.groups != 1:
            skipped.append(SkippedLayer(name, f"grouped/depthwise conv (groups={layer.groups})"))
            continue
        if isinstance(layer, nn.Linear):
            replacement, ranks, why = _factorize_linear(layer, cfg)
        elif cfg.method == "tucker2":
            replacement, ranks, why = _factorize_conv_tucker2(layer, cfg)
        else:
            replacement, ranks, why = _factorize_conv_svd(layer, cfg)
        if replacement is None:
            skipped.append(SkippedLayer(name, why))
            continue
        parent_name, _, child = name.rpartition(".")
        parent = modules[parent_name] if parent_name else model
        setattr(parent, child, replacement)
        broken = _forward_error(model, example_inputs)
        if broken is not None:
            # The model's own code reads this layer's attributes (transformers' ViT casts its
            # input to ``patch_embeddings.projection.weight.dtype``): leave that layer whole.
            setattr(parent, child, layer)
            skipped.append(SkippedLayer(name, f"the model's code needs it as is ({broken})"))
            continue
        kind = "linear-svd" if isinstance(layer, nn.Linear) else f"conv-{cfg.method}"
        if kind == "conv-tucker2" and len(replacement) == 2:
            kind = "conv-svd"
        done.append(
            FactorizedLayer(name, kind, ranks, param_count(layer), param_count(replacement))
        )
    return model, done, skipped


@handles(LowRank)
def apply_lowrank(bundle: ModelBundle, cfg: LowRank, ctx: CompressContext) -> ModelBundle:
    model, done, skipped = factorize_module(bundle.module, bundle.example_inputs, cfg)
    if not done:
        reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped) or "no Linear/Conv2d layers"
        raise CompressionError(
            f"lowrank found nothing to factorize in {bundle.name} ({reasons}); raise ratio/energy "
            "or choose other layers"
        )
    before = sum(f.params_before for f in done)
    after = sum(f.params_after for f in done)
    ctx.detail("factorized_params_before", before)
    ctx.detail("factorized_params_after", after)
    ctx.detail("layers", [f.__dict__ for f in done])
    ctx.note(
        "factorized %d layer(s) with %s: their parameters %d -> %d (%.2fx of before)",
        len(done),
        cfg.method,
        before,
        after,
        after / before,
    )
    for s in skipped:
        ctx.note("left %s as is: %s", s.name, s.reason)
    return with_module(bundle, model)
