"""Per-layer-group sensitivity to pruning and to int8, measured on the host.

For each layer group (host.search.layers) alone, with the rest of the model untouched:

* **pruning**: half of the group's channels removed (torch-pruning, the group's modules at ratio
  0.5, every other layer kept whole), no recovery; the metric drop on the validation split.
* **int8**: the group's weights quantized per output channel and its outputs per tensor to int8
  (symmetric weights, affine activations with ranges observed on calibration samples), the rest in
  float; the metric drop on the validation split.

A drop near zero means the group is free to compress; a large one means it matters. The search
prunes sensitive groups less and keeps the most int8-sensitive ones in float in a mixed-precision
file; the report shows the figures.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from host.errors import CompressionError
from host.search.layers import LayerGroup

if TYPE_CHECKING:
    import numpy as np
    import torch
    from torch import nn

    from host.data import DataSet, Split
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

PRUNE_PROBE = 0.5
MAX_SAMPLES = 300


@dataclass(frozen=True)
class GroupSensitivity:
    group: LayerGroup
    prune_drop: float | None  # None: the group cannot be pruned alone
    int8_drop: float
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.group.to_dict(),
            "prune_drop": self.prune_drop,
            "int8_drop": self.int8_drop,
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GroupSensitivity:
        return cls(
            LayerGroup.from_dict(data["group"]),
            None if data.get("prune_drop") is None else float(data["prune_drop"]),
            float(data["int8_drop"]),
            str(data.get("note", "")),
        )


def _score(module: nn.Module, split: Split, reference: np.ndarray | None, task: str) -> float:
    from host.metrics import predict, score_outputs

    return score_outputs(predict(module, split), split.labels, reference, task).value


def measure_sensitivity(
    bundle: ModelBundle, data: DataSet, groups: list[LayerGroup]
) -> list[GroupSensitivity]:
    """The sensitivity of each group (see the module doc), on at most MAX_SAMPLES validation
    samples (the test split stays for the final scores)."""
    from host.metrics import predict

    split = data.val.subset(MAX_SAMPLES)
    reference = None if split.labels is not None else predict(bundle.module, split)
    if split.labels is not None and bundle.task != "classification":
        reference = None
    base = _score(bundle.module, split, reference, bundle.task)
    calibration = data.train.subset(64)
    out = []
    for group in groups:
        prune_drop: float | None
        note = ""
        try:
            pruned = _prune_group(bundle, group)
            prune_drop = base - _score(pruned, split, reference, bundle.task)
        except CompressionError as exc:
            prune_drop, note = None, f"cannot be pruned alone: {exc}"[:300]
        quantized = fake_int8(bundle.module, group.modules, calibration)
        int8_drop = base - _score(quantized, split, reference, bundle.task)
        out.append(GroupSensitivity(group, prune_drop, int8_drop, note))
        logger.info(
            "sensitivity %s: prune %s, int8 %.4f", group.name,
            "n/a" if prune_drop is None else f"{prune_drop:.4f}", int8_drop,
        )  # fmt: skip
    return out


def _prune_group(bundle: ModelBundle, group: LayerGroup) -> nn.Module:
    from host.compress.config import ChannelPrune
    from host.compress.handlers.base import param_count
    from host.compress.handlers.pruning import structured_prune

    # Every other layer is kept whole: a tiny global ratio rounds to no channel at all.
    cfg = ChannelPrune(
        ratio=1e-6, layer_ratios=tuple((name, PRUNE_PROBE) for name in group.modules)
    )
    outcome = structured_prune(bundle.module, bundle.example_inputs, cfg)
    if param_count(outcome.model) >= param_count(bundle.module):
        raise CompressionError("no channel of the group is prunable (an output or a shared width)")
    return outcome.model


def fake_int8(module: nn.Module, names: tuple[str, ...], calibration: Split) -> nn.Module:
    """A copy of ``module`` with the weights and outputs of the Conv/Linear layers inside the named
    modules rounded to int8, as a full-int8 file would compute them."""
    import torch
    from torch import nn

    from host.metrics import to_tensor

    model = copy.deepcopy(module).cpu().eval()
    targets = [
        (name, layer)
        for name, layer in model.named_modules()
        if isinstance(layer, (nn.Conv1d, nn.Conv2d, nn.Linear))
        and any(name == n or name.startswith(n + ".") for n in names)
    ]
    ranges: dict[str, list[float]] = {}
    hooks = []
    for name, layer in targets:
        with torch.no_grad():
            layer.weight.copy_(_quantize_weight(layer.weight))

        def observe(_m: Any, _i: Any, out: torch.Tensor, name: str = name) -> None:
            low, high = ranges.setdefault(name, [0.0, 0.0])
            ranges[name] = [min(low, float(out.min())), max(high, float(out.max()))]

        hooks.append(layer.register_forward_hook(observe))
    with torch.no_grad():
        for inputs, _ in calibration.batches(32):
            model(*(to_tensor(a) for a in inputs))
    for hook in hooks:
        hook.remove()
    for name, layer in targets:
        low, high = ranges.get(name, [0.0, 0.0])

        def quantize(
            _m: Any, _i: Any, out: torch.Tensor, low: float = low, high: float = high
        ) -> torch.Tensor:
            return _fake_quant(out, low, high)

        layer.register_forward_hook(quantize)
    return model


def _quantize_weight(weight: torch.Tensor) -> torch.Tensor:
    flat = weight.reshape(weight.shape[0], -1)
    scale = flat.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return (weight / scale.reshape(shape)).round().clamp(-127, 127) * scale.reshape(shape)


def _fake_quant(tensor: torch.Tensor, low: float, high: float) -> torch.Tensor:
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-12) / 255.0
    zero = round(-low / scale) - 128
    q = (tensor / scale).round().add(zero).clamp(-128, 127)
    return (q - zero) * scale


__all__ = ["GroupSensitivity", "fake_int8", "measure_sensitivity"]
