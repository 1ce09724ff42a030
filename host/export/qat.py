"""Preparing a model for quantization-aware training so that the TFLite exporter can finish it.

:func:`prepare_qat` folds BatchNorm into the preceding convolutions, traces the model with
``torch.export`` and inserts fake-quant observers with torchao's ``prepare_qat_pt2e``; train the
returned :class:`host.export.QuantizedGraph`'s ``graph_module`` like any module, then export it with
precision ``qat_int8`` and ``quantizer_state=`` that QuantizedGraph.

Why BN is folded first: litert-torch 0.10's QAT-only conv+BN annotators trace a Python function with
``torch.export``, which torch 2.13 refuses ("Expected `mod` to be an instance of `torch.nn.Module`").
:class:`QatQuantizer` skips those annotators; folding BN beforehand means nothing is lost, and the
exported int8 model has no BN either way.
"""

from __future__ import annotations

import copy
import logging
from typing import Any

import torch
from torch import nn

from host.errors import CompressionError
from host.export import QuantizedGraph

logger = logging.getLogger(__name__)


def qat_quantizer() -> Any:
    """A litert PT2EQuantizer for per-channel symmetric int8 QAT that works with this torch."""
    from litert_torch.quantize import pt2e_quantizer as pq

    class QatQuantizer(pq.PT2EQuantizer):
        STATIC_QAT_ONLY_OPS: list[str] = []

    return QatQuantizer().set_global(
        pq.get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    )


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """A copy of ``module`` in eval mode with every Conv->BatchNorm pair fused into the conv."""
    from torch.fx.experimental.optimization import fuse

    folded = copy.deepcopy(module).eval()
    if not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules()):
        return folded
    try:
        return fuse(folded)
    except Exception as exc:  # noqa: BLE001 - a model fx cannot trace keeps its BN layers
        logger.warning("could not fold BatchNorm before QAT (%s); BN stays in float", exc)
        return folded


def prepare_qat(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> QuantizedGraph:
    """Fold BN, trace, insert fake quantization; returns the graph to train and its quantizer."""
    from torchao.quantization.pt2e import quantize_pt2e

    if any(not t.is_floating_point() for t in example_inputs):
        raise CompressionError(
            "quantization-aware training quantizes every input, but this model takes integer "
            "inputs (e.g. token ids); use dynamic int8 export for it"
        )
    quantizer = qat_quantizer()
    try:
        graph = torch.export.export(fold_batchnorm(module).train(), tuple(example_inputs)).module()
        graph = quantize_pt2e.prepare_qat_pt2e(graph, quantizer)
    except Exception as exc:
        raise CompressionError(f"cannot prepare the model for quantization-aware training: {exc}") from exc
    return QuantizedGraph(graph, quantizer)


__all__ = ["fold_batchnorm", "prepare_qat", "qat_quantizer"]
