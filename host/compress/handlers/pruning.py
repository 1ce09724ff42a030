"""Pruning: unstructured magnitude pruning and structured channel pruning (torch-pruning).

Unstructured pruning only zeroes weights: the tensors keep their shape, so a dense TFLite/ONNX file
is exactly as large and as slow as before unless the format or kernels exploit sparsity (the step
log says so). Structured pruning removes whole channels through the dependency graph, so the
exported file, the MACs and the latency really drop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from host.compress.config import ChannelPrune, UnstructuredPrune
from host.compress.handlers.base import cpu_copy, handles, head_modules, param_count, with_module
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
    ctx.sparse = True
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


# Attribute names of the query/key/value projections of a multi-head attention block, and of its
# head count and head width, in the layouts of Hugging Face transformers (BERT, RoBERTa, ViT, LLaMA
# style, DistilBERT) and of most hand-written attention modules.
_QKV_NAMES = (
    ("query", "key", "value"),
    ("q_proj", "k_proj", "v_proj"),
    ("q_lin", "k_lin", "v_lin"),
    ("q", "k", "v"),
)
_HEAD_COUNT_ATTRS = ("num_attention_heads", "num_heads", "n_heads")
_HEAD_DIM_ATTRS = ("attention_head_size", "head_dim", "head_size")


@dataclass(frozen=True)
class AttentionBlock:
    """A multi-head attention module found in a model: its q/k/v Linears and head bookkeeping."""

    module: nn.Module
    qkv: tuple[nn.Linear, nn.Linear, nn.Linear]
    heads_attr: str
    heads: int
    head_dim: int


def find_attention_blocks(model: nn.Module) -> list[AttentionBlock]:
    """Modules with q/k/v Linear children and an integer head count that divides their width."""
    from torch import nn

    blocks: list[AttentionBlock] = []
    for module in model.modules():
        heads_attr = next(
            (a for a in _HEAD_COUNT_ATTRS if isinstance(getattr(module, a, None), int)), None
        )
        if heads_attr is None:
            continue
        for names in _QKV_NAMES:
            layers = [getattr(module, n, None) for n in names]
            if not all(isinstance(layer, nn.Linear) for layer in layers):
                continue
            heads = int(getattr(module, heads_attr))
            width = layers[0].out_features
            if heads < 1 or width % heads or any(layer.out_features != width for layer in layers):
                continue
            blocks.append(AttentionBlock(module, tuple(layers), heads_attr, heads, width // heads))
            break
    return blocks


def _update_attention_bookkeeping(blocks: list[AttentionBlock]) -> list[tuple[int, int]]:
    """After heads were removed, make each block's head count agree with its q/k/v widths."""
    changes = []
    for block in blocks:
        width = block.qkv[0].out_features
        heads = width // block.head_dim
        setattr(block.module, block.heads_attr, heads)
        if isinstance(getattr(block.module, "all_head_size", None), int):
            block.module.all_head_size = width
        for attr in _HEAD_DIM_ATTRS:
            if isinstance(getattr(block.module, attr, None), int):
                setattr(block.module, attr, block.head_dim)
        changes.append((block.heads, heads))
    return changes


def _output_shapes(out: object) -> list[tuple[int, ...]]:
    import torch

    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _output_shapes(o)]
    return []


@dataclass
class PruneOutcome:
    """The pruned model, what happened to its attention heads (before, after per block) and to
    its recurrent layers' hidden units (name, before, after)."""

    model: nn.Module
    heads: list[tuple[int, int]]
    hidden_units: list[tuple[str, int, int]] = dataclasses.field(default_factory=list)


def _slice_linear(layer: nn.Linear, rows: torch.Tensor | None, cols: torch.Tensor | None) -> None:
    """Keep ``rows`` (outputs) and ``cols`` (inputs) of a Linear, in place."""
    from torch import nn

    weight = layer.weight.data
    if rows is not None:
        weight = weight[rows]
        if layer.bias is not None:
            layer.bias = nn.Parameter(layer.bias.data[rows].clone())
        layer.out_features = len(rows)
    if cols is not None:
        weight = weight[:, cols]
        layer.in_features = len(cols)
    layer.weight = nn.Parameter(weight.clone())


def _unit_importance(
    layer: object, index: int, readers: torch.Tensor | None = None
) -> torch.Tensor:
    """How much each hidden unit of layer ``index`` carries, summed over directions (a unit is kept
    or removed in every direction together): the L2 norm of what flows in (its gate rows of the
    input and recurrent matrices) times that of what flows out (its columns of the recurrent
    matrices, of the next stacked layer's input matrices, and ``readers``: the squared column norms
    of the layers reading the last layer's output). A unit with large incoming weights whose state
    nothing reads carries nothing: ranked by its rows alone, the GRU of bench.models (64 units)
    scored 2.6 points below its teacher after losing half its units and a 15-epoch recovery
    without labels, ranked by both 1.9 (and the stacked bidirectional LSTM 2.2 against 1.1).
    """
    import torch

    hidden, gates = layer.hidden_size, layer.cells[0].hh.out_features // layer.hidden_size
    flow_in = torch.zeros(hidden)
    flow_out = torch.zeros(hidden) if readers is None else readers.clone()
    for direction in range(layer.directions):
        cell = layer.cells[index * layer.directions + direction]
        for linear in (cell.ih, cell.hh):
            rows = linear.weight.detach().reshape(gates, hidden, -1)
            flow_in += rows.square().sum(dim=(0, 2))
        flow_out += cell.hh.weight.detach().square().sum(dim=0)
        if index + 1 < layer.num_layers:
            for reader in range(layer.directions):
                nxt = layer.cells[(index + 1) * layer.directions + reader].ih.weight.detach()
                cols = nxt[:, direction * hidden : (direction + 1) * hidden]
                flow_out += cols.square().sum(dim=0)
    return (flow_in * flow_out).sqrt()


def _reader_columns(group: object, hidden: int) -> torch.Tensor:
    """Squared norms, per hidden unit, of the input columns of every Linear/Conv in a
    torch-pruning group that reads a recurrent layer's output (its head, a next layer)."""
    import torch
    import torch_pruning as tp
    from torch import nn

    readers = torch.zeros(hidden)
    reads = (tp.pruner.function.prune_linear_in_channels, tp.pruner.function.prune_conv_in_channels)
    for item in group:
        dep, idxs = item
        if dep.pruning_fn not in reads or not isinstance(dep.layer, (nn.Linear, nn.Conv1d)):
            continue
        weight = dep.layer.weight.detach()
        cols = weight.transpose(0, 1).flatten(1)[list(idxs)].square().sum(dim=1)
        for value, root in zip(cols, item.root_idxs, strict=True):
            readers[int(root) % hidden] += value
    return readers


def _prune_hidden_units(layer: object, keep_last: list[int]) -> None:
    """Keep ``keep_last`` hidden units of the last layer of a LinearRecurrent, as many of each
    inner layer (the most important), in place; the next layer's inputs follow."""
    import torch

    hidden, directions = layer.hidden_size, layer.directions
    gates = layer.cells[0].hh.out_features // hidden
    count = len(keep_last)
    previous: torch.Tensor | None = None
    for index in range(layer.num_layers):
        if index == layer.num_layers - 1:
            keep = torch.tensor(sorted(keep_last))
        else:
            keep = torch.sort(torch.topk(_unit_importance(layer, index), count).indices).values
        rows = torch.cat([keep + g * hidden for g in range(gates)])
        cols = (
            None
            if previous is None
            else torch.cat([previous + d * hidden for d in range(directions)])
        )
        for direction in range(directions):
            cell = layer.cells[index * directions + direction]
            _slice_linear(cell.ih, rows, cols)
            _slice_linear(cell.hh, rows, keep)
        previous = keep
    layer.hidden_size = count


@functools.lru_cache(maxsize=1)
def _recurrent_pruner() -> object:
    """torch-pruning's view of a LinearRecurrent: input features in, ``hidden * directions``
    output features out (the sequence output), its gates pruned together inside."""
    import torch_pruning as tp

    class RecurrentPruner(tp.pruner.BasePruningFunc):
        def prune_out_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            hidden = layer.hidden_size
            removed = {int(i) % hidden for i in idxs}
            _prune_hidden_units(layer, [j for j in range(hidden) if j not in removed])
            return layer

        def prune_in_channels(self, layer: nn.Module, idxs: list[int]) -> nn.Module:
            import torch

            removed = {int(i) for i in idxs}
            keep = torch.tensor([j for j in range(layer.input_size) if j not in removed])
            for direction in range(layer.directions):
                _slice_linear(layer.cells[direction].ih, None, keep)
            layer.input_size = len(keep)
            return layer

        def get_out_channels(self, layer: nn.Module) -> int:
            return layer.hidden_size * layer.directions

        def get_in_channels(self, layer: nn.Module) -> int:
            return layer.input_size

    return RecurrentPruner()


def _shape_forward(
    layer: nn.Module, x: torch.Tensor, hx: object = None
) -> tuple[torch.Tensor, object]:
    """What torch-pruning traces of a LinearRecurrent: one op from its input to an output of the
    sequence output's shape, and final states read from that output. Tracing the unrolled steps
    themselves made its dependency search run for minutes on an 8-step GRU."""
    import torch

    hidden, directions = layer.hidden_size, layer.directions
    proxy = torch.zeros(hidden * directions, x.shape[-1], requires_grad=True)
    output = torch.nn.functional.linear(x, proxy)
    last = output[:, -1] if layer.batch_first else output[-1]
    finals = [last[..., d * hidden : (d + 1) * hidden] for d in range(directions)]
    h_n = torch.stack(finals * layer.num_layers)
    return output, ((h_n, h_n) if layer.mode == "LSTM" else h_n)


@contextlib.contextmanager
def _traced_as_one_op(model: nn.Module) -> Iterator[None]:
    """Within the block, every LinearRecurrent of ``model`` runs :func:`_shape_forward`."""
    import types

    from host.models.recurrent import LinearRecurrent

    layers = [m for m in model.modules() if isinstance(m, LinearRecurrent)]
    for layer in layers:
        layer.forward = types.MethodType(_shape_forward, layer)
    try:
        yield
    finally:
        for layer in layers:
            del layer.forward


def _prune_recurrent_layers(
    pruner: object, model: nn.Module, ratio: float, ignored: list[nn.Module]
) -> list[tuple[str, int, int]]:
    """Remove ``ratio`` of the hidden units of every recurrent layer (in linear form) of ``model``
    through torch-pruning's dependency graph, so the layers reading its sequence output follow."""
    import math

    from host.models.recurrent import LinearRecurrent

    changes = []
    function = _recurrent_pruner().prune_out_channels
    for name, layer in model.named_modules():
        if not isinstance(layer, LinearRecurrent) or any(layer is m for m in ignored):
            continue
        hidden = layer.hidden_size
        remove = min(hidden - 1, math.floor(hidden * ratio))
        if remove < 1:
            continue
        everything = list(range(hidden * layer.directions))
        readers = _reader_columns(pruner.DG.get_pruning_group(layer, function, everything), hidden)
        order = _unit_importance(layer, layer.num_layers - 1, readers).argsort()
        units = sorted(int(j) for j in order[:remove])
        idxs = [j + d * hidden for d in range(layer.directions) for j in units]
        group = pruner.DG.get_pruning_group(layer, function, idxs)
        if not pruner.DG.check_pruning_group(group):
            continue
        group.prune()
        changes.append((name, hidden, layer.hidden_size))
    return changes


def structured_prune(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    cfg: ChannelPrune,
    ignored: list[nn.Module] | None = None,
) -> PruneOutcome:
    """A copy of ``module`` with ``cfg.ratio`` of the channels of every prunable group removed.

    No output's head is pruned (its width is the number of classes / output features). In a
    model with multi-head attention, whole heads (q/k/v together, at the same ratio) and FFN
    channels are removed while the residual width stays, so the output keeps its size; the
    attention modules' head counts are updated to match. ``cfg.hidden`` prunes the residual width
    too (embeddings, LayerNorms, patch projection, class token and position embeddings), which only
    works where an output head keeps the output's width (a ViT classifier, not a sentence encoder).
    """
    import torch
    import torch_pruning as tp
    from torch import nn

    from host.models.recurrent import LinearRecurrent, linearize_recurrent

    model = cpu_copy(module).eval()
    # GRU/LSTM/RNN layers in linear form: their hidden units can then be removed, gates together.
    recurrent = linearize_recurrent(model)
    inputs = tuple(t.cpu() for t in example_inputs)
    with torch.no_grad():
        shapes_before = _output_shapes(model(*inputs))
    # Every output's head keeps its width: it is the number of classes, box coordinates, ...
    ignored_layers = head_modules(model, inputs) + list(ignored or [])
    blocks = find_attention_blocks(model)
    attention: dict[str, object] = {}
    if blocks:
        if not cfg.hidden:
            # The residual stream runs through every LayerNorm (and the embeddings): leaving those
            # alone keeps the hidden width, so only heads and FFN channels go.
            ignored_layers += [
                m for m in model.modules() if isinstance(m, (nn.LayerNorm, nn.Embedding))
            ]
        attention = {
            "num_heads": {layer: b.heads for b in blocks for layer in b.qkv},
            "prune_num_heads": True,
            "prune_head_dims": False,
            "head_pruning_ratio": cfg.ratio,
        }
    unwrapped = [
        (p, -1)
        for name, p in model.named_parameters(recurse=True)
        if not any(name.endswith(s) for s in (".weight", ".bias")) and p.dim() > 1
    ]
    per_layer = _layer_ratios(model, cfg)
    try:
        with _traced_as_one_op(model):
            pruner = tp.pruner.BasePruner(
                model,
                inputs if len(inputs) > 1 else inputs[0],
                importance=_importance(cfg.importance),
                pruning_ratio=cfg.ratio,
                pruning_ratio_dict=per_layer or None,
                global_pruning=cfg.global_pruning,
                ignored_layers=ignored_layers,
                round_to=cfg.round_to,
                unwrapped_parameters=unwrapped or None,
                customized_pruners={LinearRecurrent: _recurrent_pruner()} if recurrent else None,
                **attention,
            )
        pruner.step()
        hidden_units = (
            _prune_recurrent_layers(pruner, model, cfg.ratio, ignored_layers) if recurrent else []
        )
    except Exception as exc:  # torch-pruning raises bare Python errors from its graph tracer
        raise CompressionError(
            f"structured pruning failed while tracing/pruning the model: {type(exc).__name__}: "
            f"{exc}; try prune_unstructured or lowrank for this architecture"
        ) from exc
    heads = _update_attention_bookkeeping(blocks)
    with torch.no_grad():
        try:
            shapes_after = _output_shapes(model(*inputs))
        except Exception as exc:
            raise CompressionError(
                f"the channel-pruned model no longer runs ({exc}); this architecture has a "
                "dependency torch-pruning cannot follow"
            ) from exc
    if shapes_after != shapes_before:
        raise CompressionError(
            f"channel pruning changed the model's output shape {shapes_before} -> {shapes_after}; "
            "its output is not produced by a Linear/Conv head torch-pruning can leave alone"
        )
    return PruneOutcome(model, heads, hidden_units)


def _layer_ratios(model: nn.Module, cfg: ChannelPrune) -> dict[nn.Module, float]:
    """``cfg.layer_ratios`` as torch-pruning's module -> ratio map; an unknown name is an error."""
    modules = dict(model.named_modules())
    ratios: dict[nn.Module, float] = {}
    for name, ratio in cfg.layer_ratios:
        if name not in modules:
            raise CompressionError(
                f"prune_channels.layer_ratios names {name!r}, which the model does not have; "
                f"its top-level modules are: {', '.join(n for n, _ in model.named_children())}"
            )
        ratios[modules[name]] = float(ratio)
    return ratios


def channel_prune(
    module: nn.Module,
    example_inputs: tuple[torch.Tensor, ...],
    cfg: ChannelPrune,
    ignored: list[nn.Module] | None = None,
) -> nn.Module:
    """:func:`structured_prune`, returning only the pruned model."""
    return structured_prune(module, example_inputs, cfg, ignored).model


@handles(ChannelPrune)
def apply_channel_prune(
    bundle: ModelBundle, cfg: ChannelPrune, ctx: CompressContext
) -> ModelBundle:
    before = param_count(bundle.module)
    outcome = structured_prune(bundle.module, bundle.example_inputs, cfg)
    model = outcome.model
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
    for name, before_units, after_units in outcome.hidden_units:
        ctx.note("recurrent layer %s: hidden units %d -> %d", name, before_units, after_units)
    if outcome.heads:
        kept = sum(h for _, h in outcome.heads)
        total = sum(h for h, _ in outcome.heads)
        ctx.detail("attention_heads", [list(h) for h in outcome.heads])
        ctx.note(
            "attention: kept %d of %d heads over %d block(s); hidden width %s",
            kept,
            total,
            len(outcome.heads),
            "pruned too" if cfg.hidden else "unchanged",
        )
    return with_module(bundle, model)
