"""Quantization steps: fp16, dynamic int8 and full int8 only choose how the exporter writes the model;
quantization-aware training fine-tunes a fake-quantized graph and hands it to the exporter.

Post-training quantization happens in the exporter (host.export) because it needs the exported
graph and calibration data there anyway; keeping the torch module untouched here also lets one
compressed model be exported at several precisions.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from host.compress.config import Fp16, Int8Dynamic, Int8Full, QuantAwareTraining
from host.compress.handlers.base import cpu_copy, handles, with_module
from host.errors import CompressionError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.compress.context import CompressContext
    from host.models import ModelBundle

logger = logging.getLogger(__name__)


@handles(Fp16)
def apply_fp16(bundle: ModelBundle, cfg: Fp16, ctx: CompressContext) -> ModelBundle:
    ctx.precision = "fp16"
    ctx.note("export with float16 weights (computation stays float32 on most CPUs)")
    return bundle


@handles(Int8Dynamic)
def apply_int8_dynamic(bundle: ModelBundle, cfg: Int8Dynamic, ctx: CompressContext) -> ModelBundle:
    from torch import nn

    ctx.precision = "int8_dynamic"
    ctx.note("export with int8 weights; activations are quantized at run time")
    convs = sum(isinstance(m, (nn.Conv1d, nn.Conv2d)) for m in bundle.module.modules())
    if convs:
        # Measured on MobileNetV2 and EfficientNet-B0 at 128 px: hybrid CONV_2D/DEPTHWISE_CONV_2D
        # kernels run outside XNNPACK, which splits the graph (docs/benchmarks.md, "Which precision a conv net
        # should use").
        ctx.note(
            "%d convolution(s): dynamic-range int8 convolutions run outside XNNPACK and are slower "
            "than full int8 on CPU, often slower than fp32; for conv nets prefer int8 or fp16",
            convs,
        )
    return bundle


@handles(Int8Full)
def apply_int8(bundle: ModelBundle, cfg: Int8Full, ctx: CompressContext) -> ModelBundle:
    ctx.precision = "int8"
    ctx.calibration_samples = cfg.calibration_samples
    ctx.note(
        "export as full-integer int8 (per-channel weights), calibrated on %d samples",
        cfg.calibration_samples,
    )
    if cfg.float_layers:
        modules = dict(bundle.module.named_modules())
        unknown = [name for name in cfg.float_layers if name not in modules]
        if unknown:
            raise CompressionError(
                f"int8.float_layers names {', '.join(unknown)}, which {bundle.name} does not have"
            )
        ctx.float_layers = tuple(cfg.float_layers)
        ctx.note("mixed precision: %s stay float", ", ".join(cfg.float_layers))
    return bundle


def _qat_wrapper_class() -> type:
    from torch import nn

    class FakeQuantModel(nn.Module):
        """Wraps a prepare_qat_pt2e graph so that ordinary training loops can call train()/eval().

        torchao forbids ``.train()``/``.eval()`` on exported graphs (they would not switch
        batch-norm or dropout); the wrapper routes them to torchao's move_exported_model_to_* .
        In eval mode the observers are frozen as well, so that scoring a validation split (or
        exporting) never moves the quantization ranges learnt in training.

        Training keeps the graph's batch norms (those that follow no convolution) and dropout in
        eval form: re-estimating batch statistics on fine-tuning batches changes the function
        the model computes, and for a model whose running statistics do not match the data (a
        freshly initialised transformers ResNet with 1000 classes on random inputs) that alone
        took QAT from the PTQ model's 0.98 agreement to 0.05. Only weights and ranges train.
        """

        def __init__(self, graph_module: nn.Module) -> None:
            super().__init__()
            self.graph_module = graph_module

        def train(self, mode: bool = True) -> FakeQuantModel:
            from torchao.quantization.pt2e import (
                disable_observer,
                enable_observer,
                move_exported_model_to_eval,
            )

            move_exported_model_to_eval(self.graph_module)
            self.graph_module.apply(enable_observer if mode else disable_observer)
            self.training = mode
            return self

        def eval(self) -> FakeQuantModel:
            return self.train(False)

        def calibrate(self, batches: Iterable[tuple[torch.Tensor, ...]]) -> int:
            """Set every observer's range from real samples with eval-mode batch norm (what
            post-training int8 does), so that training starts from the PTQ model. Returns the
            number of samples seen."""
            import torch
            from torchao.quantization.pt2e import enable_observer

            self.eval()
            self.graph_module.apply(enable_observer)
            seen = 0
            with torch.no_grad():
                for inputs in batches:
                    self.graph_module(*inputs)
                    seen += len(inputs[0])
            self.eval()
            return seen

        def forward(self, *inputs: torch.Tensor) -> Any:
            return self.graph_module(*inputs)

    return FakeQuantModel


def _batch_norms_left(graph_module: Any) -> int:
    """How many batch-norm ops an exported graph still computes."""
    import torch

    batch_norms = {
        torch.ops.aten._native_batch_norm_legit_no_training.default,
        torch.ops.aten._native_batch_norm_legit.default,
        torch.ops.aten.batch_norm.default,
    }
    return sum(
        n.op == "call_function" and n.target in batch_norms for n in graph_module.graph.nodes
    )


def prepare_qat(
    module: nn.Module, example_inputs: tuple[torch.Tensor, ...]
) -> tuple[nn.Module, Any, int]:
    """(trainable fake-quant model, quantizer, batch norms left unfolded) for int8 per-channel QAT.

    The model is captured in eval mode and every batch norm that directly follows a convolution
    is folded into it *in the exported ATen graph* (torchao's ``_fuse_conv_bn_``, what
    ``prepare_pt2e`` does for post-training int8). Folding at module level with torch.fx
    ``symbolic_trace`` left every batch norm of transformers' MobileNetV2 unfolded: its TF-style
    "SAME" padding computes pads from the input shape, which symbolic tracing cannot follow. An
    unfolded batch norm then sits in float between a fake-quantized convolution and the next
    quantized op, and the converted file scored 0.61 where PTQ int8 of the same model scored 0.94.
    """
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e
    from torchao.quantization.pt2e.utils import _fuse_conv_bn_

    from host.export.canonical import canonicalize
    from host.export.tflite import capture_with_free_batch, pt2e_quantizer, split_silu

    model = cpu_copy(module).eval()
    canonicalize(model, example_inputs)
    quantizer = pt2e_quantizer(
        get_symmetric_quantization_config(is_per_channel=True, is_qat=True), qat=True
    )
    try:
        graph = capture_with_free_batch(model, example_inputs)
        _fuse_conv_bn_(graph)
        split_silu(graph)
        left = _batch_norms_left(graph)
        prepared = prepare_qat_pt2e(graph, quantizer)
    except Exception as exc:  # torch.export reports unsupported Python constructs this way
        raise CompressionError(
            f"QAT could not capture the model with torch.export: {type(exc).__name__}: {exc}"
        ) from exc
    return _qat_wrapper_class()(prepared), quantizer, left


def _calibration_batches(ctx: CompressContext, batch: int) -> Iterable[tuple[torch.Tensor, ...]]:
    from host.metrics import to_tensor

    split = ctx.data.train.subset(ctx.calibration_samples)
    for inputs, _ in split.batches(batch):
        if len(inputs[0]) > 1:  # batch norm in train-mode graphs refuses a single sample
            yield tuple(to_tensor(a) for a in inputs)


@handles(QuantAwareTraining)
def apply_qat(bundle: ModelBundle, cfg: QuantAwareTraining, ctx: CompressContext) -> ModelBundle:
    """Fake-quantized fine-tuning that starts from the calibrated post-training int8 model.

    Observers are first set from real samples, as PTQ sets them; then training towards the labels
    (or, without labels, the uncompressed model's outputs) runs, and the best validation state,
    the calibrated start included, is kept. So QAT ends no worse on validation than the PTQ-like
    start, up to validation noise; an uncalibrated start (ranges learnt from the first training
    batches of a model in train mode) was what could leave QAT far below PTQ.
    """
    from host.compress.handlers.training import RECOVERY_LR_RETRIES, note_fit
    from host.export import QuantizedGraph
    from host.train import FitLog, fit

    wrapped, quantizer, bn_left = prepare_qat(bundle.module, bundle.example_inputs)
    if bn_left:
        ctx.note(
            "%d batch norm(s) follow no convolution and cannot be folded; they stay float", bn_left
        )
    seen = wrapped.calibrate(_calibration_batches(ctx, 32))
    ctx.note("calibrated the int8 ranges on %d samples before training", seen)
    teacher = cpu_copy(ctx.teacher.module).eval() if ctx.data.train.labels is None else None
    log = FitLog()
    trained = fit(
        wrapped,
        ctx.data,
        cfg.epochs,
        cfg.lr,
        teacher=teacher,
        batch_size=cfg.batch_size,
        seed=ctx.seed,
        task=bundle.task,
        log=log,
        lr_retries=RECOVERY_LR_RETRIES,
        progress=lambda label, frac: ctx.report(f"qat {label}", frac),
    )
    trained = trained.cpu().eval()
    ctx.precision = "qat_int8"
    ctx.quantizer_state = QuantizedGraph(graph_module=trained.graph_module, quantizer=quantizer)
    ctx.note(
        "trained %d epoch(s) with int8 fake quantization (per-channel weights)%s",
        cfg.epochs,
        "" if teacher is None else ", towards the uncompressed model's outputs (no labels)",
    )
    note_fit(ctx, log, cfg.lr)
    return with_module(bundle, trained)
