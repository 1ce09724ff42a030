"""TFLite exporter through litert-torch; precisions fp32, fp16, int8_dynamic, int8 and qat_int8.

* fp32: ``litert_torch.convert``.
* fp16: fp32 file, then ai-edge-quantizer float casting of weights to float16 (float compute).
* int8_dynamic: fp32 file, then ai-edge-quantizer ``dynamic_wi8_afp32`` (int8 per-channel weights,
  activations quantized on the fly; float input/output), or ``weight_only_wi8_afp32`` with
  ``ExportConfig(dynamic_scheme="weight_only")`` for boards on tflite-runtime 2.14, which computes
  wrong outputs for the dynamic scheme (checked: every sample mapped to one class). Works for
  models with integer inputs (token ids) too. PT2E ``is_dynamic=True`` was not chosen: its
  FULLY_CONNECTED v12 does not even load in tflite-runtime 2.14.
* int8: PT2E static per-channel quantization calibrated on real samples; float inputs and outputs
  become int8, integer inputs (token ids, masks) stay integers, ops the quantizer has no pattern
  for (a transformer's LayerNorm, softmax) run in float between a dequantize and a quantize.
* qat_int8: the same conversion from a QAT-trained :class:`host.export.QuantizedGraph`.
"""

from __future__ import annotations

import copy
import logging
import os
import tempfile
from pathlib import Path
from typing import Any, ClassVar

from host.errors import ExportError
from host.export import Exporter, ExportRequest, QuantizedGraph
from host.export.diagnose import export_error

logger = logging.getLogger(__name__)


class TfliteExporter(Exporter):
    format: ClassVar[str] = "tflite"
    precisions: ClassVar[tuple[str, ...]] = ("fp32", "fp16", "int8_dynamic", "int8", "qat_int8")

    def write(self, request: ExportRequest, path: Path) -> None:
        precision = request.config.precision
        if precision == "fp32":
            self._convert(request.module, request.examples_for_litert(), path)
        elif precision in ("fp16", "int8_dynamic"):
            with tempfile.TemporaryDirectory() as tmp:
                float_path = Path(tmp) / "float.tflite"
                self._convert(request.module, request.examples_for_litert(), float_path)
                scheme = precision if precision == "fp16" else request.config.dynamic_scheme
                _post_quantize(float_path, path, scheme)
        elif precision == "int8":
            graph, quantizer = _prepare_static(request)
            self._finish_pt2e(graph, quantizer, request, path)
        elif precision == "qat_int8":
            state = request.quantizer_state
            if not isinstance(state, QuantizedGraph):
                raise ExportError("qat_int8 needs a QuantizedGraph as quantizer_state")
            self._finish_pt2e(copy.deepcopy(state.graph_module), state.quantizer, request, path)
        else:
            raise ExportError(f"TFLite exporter cannot produce {precision!r}")

    @staticmethod
    def _convert(
        module: Any, examples: tuple[Any, ...], path: Path, quant_config: Any = None
    ) -> None:
        import litert_torch

        # Long conversions report through our own progress; keep litert's console lines out of it.
        os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
        try:
            edge = litert_torch.convert(module, examples, quant_config=quant_config)
            edge.export(str(path))
        except ExportError:
            raise
        except Exception as exc:
            raise export_error(exc, module, examples, "TFLite conversion") from exc

    def _finish_pt2e(self, graph: Any, quantizer: Any, request: ExportRequest, path: Path) -> None:
        from litert_torch.quantize.quant_config import QuantConfig
        from torchao.quantization.pt2e import move_exported_model_to_eval as to_eval
        from torchao.quantization.pt2e import quantize_pt2e

        try:
            to_eval(graph)
            converted = quantize_pt2e.convert_pt2e(graph, fold_quantize=False)
            # An exported graph refuses .eval(); its ops are already in eval form (to_eval), so only
            # the flag litert-torch checks is left to clear.
            for submodule in converted.modules():
                submodule.training = False
            _private_dequantize(converted)
        except Exception as exc:
            raise export_error(
                exc, request.module, request.example_inputs, "int8 conversion"
            ) from exc
        self._convert(
            converted, request.examples_for_litert(), path, QuantConfig(pt2e_quantizer=quantizer)
        )


def _private_dequantize(graph_module: Any) -> int:
    """Give every dequantize node of a converted PT2E graph one user (a copy per extra user).

    torchao's DuplicateDQPass copies a shared dequantize only for users its quantizer annotated, so
    a quantized tensor feeding an annotated op and an unannotated one (the residual of an inverted
    block feeding both an ``add`` and the ``pad`` of TF-style "SAME" padding, as in transformers'
    MobileNetV2) keeps one shared node. litert-torch's layout pass then places its two users in
    different layouts; inserting the (transpose, q, dq) for the first overwrites the shared node's
    metadata, shape included, so the second fails with "Attempting to convert non-NHWC compatible
    node to NHWC". A private dequantize per user is numerically the same graph. Returns how many
    copies were made.
    """
    import torch

    dequantize = {
        torch.ops.quantized_decomposed.dequantize_per_tensor.default,
        torch.ops.quantized_decomposed.dequantize_per_tensor.tensor,
        torch.ops.quantized_decomposed.dequantize_per_channel.default,
    }
    graph = graph_module.graph
    copies = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in dequantize:
            continue
        for user in list(node.users)[1:]:
            with graph.inserting_after(node):
                private = graph.node_copy(node)
            private.meta = dict(node.meta)
            user.replace_input_with(node, private)
            copies += 1
    if copies:
        graph.lint()
        graph_module.recompile()
        logger.debug("gave %d shared dequantize node(s) a private copy per user", copies)
    return copies


def pt2e_quantizer(config: Any, qat: bool = False, float_modules: tuple[str, ...] = ()) -> Any:
    """litert-torch's PT2E quantizer set to ``config``, with two repairs for torch 2.13's export.

    Its ``add`` annotator looks residual adds up by source function, and torch 2.13's export names
    them ``method_descriptor.add``, which it does not list (its ``mul`` annotator lists ``"mul"``):
    every residual add of EfficientNet-B0 stayed float between a dequantize and a quantize. Residual
    adds left unannotated get the same annotation here. With ``qat``, its QAT-only
    conv+bn patterns are dropped: they are traced with torch.export from plain functions, which
    torch 2.13 refuses; batch norms are folded into their convolutions in the captured graph
    instead (see host.compress.handlers.quantization.prepare_qat). ``float_modules``: module
    names whose ops stay float (mixed precision); a node belongs to a module when the module is
    on its ``nn_module_stack``.
    """
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    def quantized(node: Any) -> bool:
        if recurrent_state_op(node):
            return False
        return not (float_modules and in_modules(node, float_modules))

    class Quantizer(PT2EQuantizer):
        STATIC_QAT_ONLY_OPS: ClassVar[list[str]] = [] if qat else PT2EQuantizer.STATIC_QAT_ONLY_OPS

        def annotate(self, model: Any) -> Any:
            filtered = float_modules or any(recurrent_state_op(n) for n in model.graph.nodes)
            if filtered and self.global_config is not None:
                if self.global_config.is_dynamic:
                    raise ExportError("float_modules applies to static int8 only")
                from litert_torch.quantize.pt2e_quantizer_utils import propagate_annotation

                self._annotate_all_static_patterns(model, self.global_config, quantized)
                propagate_annotation(model)
            else:
                model = super().annotate(model)
            if self.global_config is not None and not self.global_config.is_dynamic:
                _annotate_float_adds(model, self.global_config, quantized)
            return model

    return Quantizer().set_global(config)


def recurrent_state_op(node: Any) -> bool:
    """Whether a node is the gate and state arithmetic of a recurrent layer in linear form
    (host.models.recurrent): traced in the LinearRecurrent itself, not in one of its Linears.

    A full int8 export keeps these in float and quantizes the gate matrices (FULLY_CONNECTED)
    only, as TFLite's own integer LSTM keeps its cell state wider than int8: quantizing the
    products and sums of the gates and the cell state at every step cost the stacked
    bidirectional LSTM of bench.models 1.9 points (agreement with fp32 96.3%; in float 99.3%), and
    its 128 QUANTIZE ops made the file larger than this one's 60.
    """
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    if not stack:
        return False
    innermost = list(stack.values())[-1]
    kind = innermost[1] if isinstance(innermost, tuple) and len(innermost) > 1 else ""
    if isinstance(kind, type):
        kind = f"{kind.__module__}.{kind.__qualname__}"
    return str(kind) == "host.models.recurrent.LinearRecurrent"


def module_path(key_and_value: tuple[str, Any]) -> str:
    """A module's dotted name from one ``nn_module_stack`` entry (``L['self'].a.b`` or ``a.b``)."""
    key, value = key_and_value
    path = value[0] if isinstance(value, tuple) and value and isinstance(value[0], str) else key
    for prefix in ("L['self'].", "L['self']", "self."):
        path = path.removeprefix(prefix)
    return path.replace("._modules['", ".").replace("']", "")


def in_modules(node: Any, names: tuple[str, ...]) -> bool:
    """Whether an exported graph's node was traced inside one of the named modules."""
    stack = getattr(node, "meta", {}).get("nn_module_stack") or {}
    paths = [module_path(item) for item in stack.items()]
    return any(p == name or p.startswith(name + ".") for p in paths for name in names)


def _annotate_float_adds(graph_module: Any, config: Any, wanted: Any = None) -> int:
    """Annotate, as litert-torch's ``add`` annotator would, every unannotated add of two float
    tensors of one shape that are both outputs the quantizer already quantizes (through an
    eval-mode dropout, which passes its input on): a residual add between quantized layers.
    Returns how many.

    Anything else stays float. A transformer's attention-mask add is the case in point: the mask
    spans the float range (-3.4e38 where masked), and quantized (scale 1.3e36) it made the runtime
    abort the whole process while loading the file (a BERT student with one head per layer, whose
    mask add has the same shape as its scores).
    """
    import torch

    passthrough = {torch.ops.aten.dropout.default, torch.ops.aten.clone.default}

    def float_shape(arg: Any) -> tuple[Any, ...] | None:
        value = getattr(arg, "meta", {}).get("val")
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return tuple(value.shape)
        return None

    def quantized_output(arg: Any) -> bool:
        while getattr(arg, "op", None) == "call_function" and arg.target in passthrough:
            arg = arg.args[0]
        annotation = getattr(arg, "meta", {}).get("quantization_annotation")
        return annotation is not None and annotation.output_qspec is not None

    from litert_torch.quantize.pt2e_quantizer_utils import (
        get_input_act_qspec,
        get_output_act_qspec,
    )
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

    annotated = 0
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or node.target not in (
            torch.ops.aten.add.Tensor,
            torch.ops.aten.add_.Tensor,
        ):
            continue
        if "quantization_annotation" in node.meta:
            continue
        if wanted is not None and not wanted(node):
            continue
        inputs = node.args[:2]
        shape = float_shape(node)
        if shape is None or any(float_shape(a) != shape for a in inputs):
            continue
        if not all(quantized_output(a) for a in inputs):
            continue
        node.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={a: get_input_act_qspec(config) for a in inputs},
            output_qspec=get_output_act_qspec(config),
            _annotated=True,
        )
        annotated += 1
    return annotated


def split_silu(graph_module: Any) -> int:
    """Write every ``silu(x)`` of an exported ATen graph as ``x * sigmoid(x)``, in place, before
    PT2E annotation; returns how many were rewritten.

    litert-torch's PT2E quantizer has no annotator for ``silu`` but has one for ``mul`` and a fixed
    range for ``sigmoid``: in EfficientNet-B0's full-int8 file 49 of its 65 SiLUs ran in float
    between a dequantize and a quantize. The converter lowers ``silu`` to the same LOGISTIC and MUL,
    so the float file does not change; the int8 one now quantizes both.
    """
    import torch

    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not torch.ops.aten.silu.default:
            continue
        (x,) = node.args[:1]
        with graph.inserting_before(node):
            gate = graph.call_function(torch.ops.aten.sigmoid.default, (x,))
            product = graph.call_function(torch.ops.aten.mul.Tensor, (x, gate))
        gate.meta = dict(node.meta)
        product.meta = dict(node.meta)
        node.replace_all_uses_with(product)
        graph.erase_node(node)
        rewritten += 1
    if rewritten:
        graph.lint()
        graph_module.recompile()
        logger.debug("wrote %d silu op(s) as x * sigmoid(x) for quantization", rewritten)
    return rewritten


# Calibration batches: every observer updates its histogram once per call, so feeding samples one
# at a time cost as much as the conversion itself on a small MobileNetV2.
CALIBRATION_BATCH = 32


def capture_with_free_batch(module: Any, examples: tuple[Any, ...]) -> Any:
    """``module`` exported (torch.export) with a free batch dimension, from a batch of two made of
    the examples: training and calibration then feed whole batches, where a batch-1 example lets
    torch.export fix the batch size at 1. Raises what torch.export raises."""
    import torch

    doubled = tuple(torch.cat([t.cpu(), t.cpu()]) for t in examples)
    dynamic = tuple({0: torch.export.Dim.AUTO} for _ in examples)
    return torch.export.export(module, doubled, dynamic_shapes=dynamic).module()


def _capture(module: Any, examples: tuple[Any, ...]) -> tuple[Any, bool]:
    """``module`` exported with a free batch dimension when it allows one (calibration then runs in
    batches), else at the examples' batch size; and which of the two it is."""
    import torch

    try:
        return capture_with_free_batch(module, examples), True
    except Exception as exc:  # noqa: BLE001 - e.g. a reshape that fixes the batch size
        logger.debug("no free batch dimension (%s); calibrating at the examples' batch size", exc)
        return torch.export.export(module, examples).module(), False


def _batch_bounds(samples: int, size: int) -> list[tuple[int, int]]:
    """(start, stop) of batches of ``size``; a last batch of one joins the one before it (a free
    batch dimension is exported for sizes of two and more)."""
    bounds = [(start, min(start + size, samples)) for start in range(0, samples, size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < 2:
        bounds[-2:] = [(bounds[-2][0], samples)]
    return bounds


def _prepare_static(request: ExportRequest) -> tuple[Any, Any]:
    """PT2E per-channel symmetric quantization, calibrated on ``request.calibration``."""
    import torch
    from torchao.quantization.pt2e import quantize_pt2e

    from host.export.observers import static_int8_config
    from host.metrics import to_tensor

    if request.calibration is None:
        raise ExportError("full int8 export needs calibration data")
    quantizer = pt2e_quantizer(static_int8_config(), float_modules=request.config.float_layers)

    def prepared(batched: bool) -> tuple[Any, bool]:
        try:
            if batched:
                graph, batched = _capture(request.module, request.example_inputs)
            else:
                graph = torch.export.export(request.module, request.example_inputs).module()
            split_silu(graph)
            return quantize_pt2e.prepare_pt2e(graph, quantizer), batched
        except Exception as exc:
            raise export_error(
                exc, request.module, request.example_inputs, "int8 preparation"
            ) from exc

    graph, batched = prepared(True)
    calib = request.calibration.subset(request.config.calibration_samples)
    samples = len(calib)
    with torch.no_grad():
        if batched:
            try:
                for start, stop in _batch_bounds(samples, CALIBRATION_BATCH):
                    graph(*(to_tensor(a[start:stop]) for a in calib.inputs))
            except Exception as exc:  # noqa: BLE001 - a batch size the captured graph refuses
                logger.info("calibrating at the examples' batch size: batches failed (%s)", exc)
                graph, batched = prepared(False)
        if not batched:
            batch = int(request.example_inputs[0].shape[0]) or 1
            for start in range(0, samples - batch + 1, batch):
                graph(*(to_tensor(a[start : start + batch]) for a in calib.inputs))
    logger.debug("calibrated int8 ranges on %d samples", samples)
    return graph, quantizer


def _post_quantize(float_path: Path, out_path: Path, scheme: str) -> None:
    """Quantize a float .tflite with ai-edge-quantizer: ``dynamic``, ``weight_only`` or ``fp16``."""
    from ai_edge_quantizer import qtyping, quantizer, recipe

    precision = "fp16" if scheme == "fp16" else f"int8_dynamic ({scheme})"
    try:
        q = quantizer.Quantizer(str(float_path))
        if scheme == "dynamic":
            q.load_quantization_recipe(recipe.dynamic_wi8_afp32())
        elif scheme == "weight_only":
            q.load_quantization_recipe(recipe.weight_only_wi8_afp32())
        else:
            q.update_quantization_recipe(
                regex=".*",
                operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
                algorithm_key=quantizer.AlgorithmName.FLOAT_CASTING,
                op_config=qtyping.OpQuantizationConfig(
                    weight_tensor_config=qtyping.TensorQuantizationConfig(
                        num_bits=16, dtype=qtyping.TensorDataType.FLOAT
                    ),
                    compute_precision=qtyping.ComputePrecision.FLOAT,
                    explicit_dequantize=True,
                ),
            )
        result = q.quantize(enable_progress_report=False)
    except Exception as exc:
        raise ExportError(f"ai-edge-quantizer could not make a {precision} model: {exc}") from exc
    if not result.quantized_model:
        raise ExportError(f"ai-edge-quantizer produced no {precision} model")
    out_path.write_bytes(bytes(result.quantized_model))


__all__ = ["TfliteExporter"]
