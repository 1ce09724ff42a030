"""A model's layer groups: the stages a search prunes at ratios of their own, keeps in float in a
mixed-precision file, and measures the sensitivity of.

Found, for any model, in its largest container (``nn.Sequential`` / ``nn.ModuleList``) of two or
more parameterized children: transformers' ResNet stages, MobileNetV2's blocks, a ViT's encoder
layers, a zoo CNN's convolutions. Its children are split, in order, into at most ``max_groups``
contiguous groups of about equal parameter count. A model without such a container is grouped by
its top-level children.

Given example inputs, each group also carries its MACs (torch's flop counter over one forward pass,
attributed to the group's modules): where latency is, so the search prunes MAC-heavy groups more.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host.errors import CompressionError

if TYPE_CHECKING:
    from torch import nn

MAX_GROUPS = 4


@dataclass(frozen=True)
class LayerGroup:
    """Consecutive modules of a model, by name, their parameter count and MACs (0: not counted)."""

    name: str
    modules: tuple[str, ...]
    params: int
    macs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "modules": list(self.modules),
            "params": self.params,
            "macs": self.macs,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LayerGroup:
        return cls(
            str(data["name"]),
            tuple(data["modules"]),
            int(data["params"]),
            int(data.get("macs") or 0),
        )


def _params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def module_macs(model: nn.Module, example_inputs: tuple[Any, ...]) -> dict[str, int]:
    """MACs of one forward pass per module name ("" for the whole model), children included."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(*example_inputs)
    finally:
        model.train(was_training)
    # The counter names a module "<RootClass>.<name>" and the whole model "<RootClass>".
    root = type(model).__name__
    out: dict[str, int] = {}
    for key, per_op in counter.get_flop_counts().items():
        name = str(key)
        if name == root:
            out[""] = int(sum(per_op.values()) // 2)
        elif name.startswith(root + "."):
            out[name[len(root) + 1 :]] = int(sum(per_op.values()) // 2)
    return out


def layer_groups(
    model: nn.Module,
    max_groups: int = MAX_GROUPS,
    example_inputs: tuple[Any, ...] | None = None,
) -> list[LayerGroup]:
    """The model's layer groups (see the module doc), with their MACs when ``example_inputs``
    are given; CompressionError when it has no layers."""
    from torch import nn

    best: tuple[int, int, str, list[tuple[str, nn.Module]]] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Sequential, nn.ModuleList)):
            continue
        children = [(f"{name}.{c}" if name else c, m) for c, m in module.named_children()]
        children = [(n, m) for n, m in children if _params(m) > 0]
        if len(children) < 2:
            continue
        key = (_params(module), name.count("."), name, children)
        if best is None or key[:2] > best[:2]:
            best = key
    if best is None or best[0] < 0.3 * _params(model):
        children = [(n, m) for n, m in model.named_children() if _params(m) > 0]
    else:
        children = best[3]
    if not children:
        raise CompressionError("the model has no parameterized layers to group")
    count = min(max_groups, len(children))
    total = sum(_params(m) for _, m in children)
    groups: list[list[tuple[str, nn.Module]]] = [[] for _ in range(count)]
    seen = 0
    for index, (name, module) in enumerate(children):
        # Contiguous, about equal in parameters, and never an empty group.
        left = len(children) - index
        slot = min(int(count * seen / total) if total else 0, count - 1)
        slot = max(slot, count - left)
        slot = min(slot, max((i for i, g in enumerate(groups) if g), default=-1) + 1)
        groups[slot].append((name, module))
        seen += _params(module)
    macs = module_macs(model, example_inputs) if example_inputs is not None else {}
    return [
        LayerGroup(
            name=f"g{i}:{members[0][0]}" + (f"..{members[-1][0]}" if len(members) > 1 else ""),
            modules=tuple(n for n, _ in members),
            params=sum(_params(m) for _, m in members),
            macs=sum(macs.get(n, 0) for n, _ in members),
        )
        for i, members in enumerate(groups)
        if members
    ]


__all__ = ["MAX_GROUPS", "LayerGroup", "layer_groups", "module_macs"]
