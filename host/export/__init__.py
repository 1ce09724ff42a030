"""Export a candidate model to a deployable file (TFLite, ONNX) with its artifact manifest.

Public API (shared with host.compress):

* :class:`ExportConfig` – which format and precision to produce.
* :class:`QuantizedGraph` – the hand-over from quantization-aware training: a GraphModule prepared
  with torchao's ``prepare_qat_pt2e`` and trained, plus the quantizer that prepared it. Pass it as
  ``quantizer_state`` with precision ``"qat_int8"``; the exporter finishes it with ``convert_pt2e``.
* :func:`export` – module (or ModelBundle) -> :class:`Artifact` (content-addressed file + manifest).
* :func:`run_artifact`, :func:`evaluate_artifact`, :func:`measure_latency` – run the exported file
  through its own runtime on the host (ai_edge_litert for TFLite, onnxruntime for ONNX).

Exporters register in :data:`EXPORTERS` by format and never mutate their input (they deepcopy it).
Heavy imports (litert_torch, onnxruntime, ...) happen inside methods so importing this package is
cheap.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from host.errors import ExportError
from shared.fsutil import atomic_write
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest, encode_manifest
from shared.registry import Registry

if TYPE_CHECKING:
    import numpy as np
    import torch

    from host.data import Split
    from host.metrics import MetricResult
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

ExportFormat = Literal["tflite", "onnx"]
ExportPrecision = Literal["fp32", "fp16", "int8_dynamic", "int8", "qat_int8"]
FORMATS: tuple[str, ...] = ("tflite", "onnx")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8_dynamic", "int8", "qat_int8")
EXTENSIONS = {"tflite": "tflite", "onnx": "onnx"}


@dataclass(frozen=True)
class ExportConfig:
    """What to produce: a file format and the numeric precision of the exported model.

    ``dynamic_scheme`` chooses how TFLite ``int8_dynamic`` is built. ``"dynamic"`` (default): int8
    weights with activations quantized at run time, about 2x faster than fp32 in ai-edge-litert,
    but tflite-runtime 2.14 loads such a file and silently computes wrong outputs. ``"weight_only"``:
    int8 weights dequantized before float compute; same size, no speed-up, correct in every
    runtime from tflite-runtime 2.14 on. Choose it for boards still on tflite-runtime.
    """

    format: ExportFormat = "tflite"
    precision: ExportPrecision = "fp32"
    calibration_samples: int = 256
    dynamic_scheme: Literal["dynamic", "weight_only"] = "dynamic"
    # Full int8 with these modules (by name, with the layers inside them) left in float.
    float_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(
                f"unknown export format {self.format!r}; choose one of {', '.join(FORMATS)}"
            )
        if self.precision not in PRECISIONS:
            raise ExportError(
                f"unknown export precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}"
            )
        if self.dynamic_scheme not in ("dynamic", "weight_only"):
            raise ExportError(
                f"unknown dynamic_scheme {self.dynamic_scheme!r}; use 'dynamic' or 'weight_only'"
            )
        if self.calibration_samples < 1:
            raise ExportError(
                f"calibration_samples must be at least 1, got {self.calibration_samples}"
            )
        if self.float_layers and self.precision != "int8":
            raise ExportError(
                f"float_layers keeps modules float in a full int8 export; precision "
                f"{self.precision!r} has no int8 layers to leave out"
            )


@dataclass
class QuantizedGraph:
    """A QAT model ready to be converted to int8.

    ``graph_module`` is the ``torch.fx.GraphModule`` returned by torchao's ``prepare_qat_pt2e``
    (after training; fake-quant observers hold the learnt ranges) and ``quantizer`` the
    ``litert_torch.quantize.pt2e_quantizer.PT2EQuantizer`` that prepared it. The exporter calls
    ``move_exported_model_to_eval`` and ``convert_pt2e(fold_quantize=False)`` on a copy and converts
    with ``QuantConfig(pt2e_quantizer=quantizer)``, so the file has int8 input and output.
    """

    graph_module: Any
    quantizer: Any


@dataclass(frozen=True)
class Artifact:
    """An exported file (named by its sha256) and the manifest written beside it."""

    path: Path
    manifest: ArtifactManifest

    @property
    def manifest_path(self) -> Path:
        return self.path.with_suffix(".json")


@dataclass
class ExportRequest:
    """Everything an exporter needs; built by :func:`export`."""

    module: torch.nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    config: ExportConfig
    calibration: Split | None = None
    quantizer_state: Any = None
    input_names: list[str] = field(default_factory=list)

    def examples_for_litert(self) -> tuple[torch.Tensor, ...]:
        """Example inputs as litert-torch traces them (it narrows int64 to int32 anyway)."""
        return self.example_inputs


class Exporter:
    """Base of exporters; a subclass writes ``request`` to ``path`` in its format."""

    format: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ()

    def write(self, request: ExportRequest, path: Path) -> None:
        raise NotImplementedError


EXPORTERS: Registry[str, type[Exporter]] = Registry("exporter")


def _register_builtin_exporters() -> None:
    from host.export.onnx import OnnxExporter
    from host.export.tflite import TfliteExporter

    for cls in (TfliteExporter, OnnxExporter):
        if cls.format not in EXPORTERS:
            EXPORTERS.add(cls.format, cls)


def export(
    bundle_or_module: ModelBundle | torch.nn.Module,
    example_inputs: tuple[torch.Tensor, ...] | None,
    cfg: ExportConfig,
    out_dir: str | Path,
    *,
    calibration: Split | None = None,
    recipe: list[dict[str, Any]] | None = None,
    quantizer_state: Any = None,
    name: str = "",
    task: str | None = None,
    evaluate_on: Split | None = None,
    reference: np.ndarray | None = None,
) -> Artifact:
    """Export a model to ``out_dir/{sha256}.{ext}`` and write its manifest beside it.

    ``example_inputs`` may be None when a ModelBundle is given (its own example inputs are used).
    When ``evaluate_on`` is given, the exported file is run through its runtime on that split and
    the metric lands in the manifest's ``metrics`` (``host_metric``/``host_metric_value``).
    """
    import torch

    from host.export.canonical import canonicalize
    from host.metrics import count_macs, count_params

    _register_builtin_exporters()
    module, examples, bundle_name, bundle_task = _unpack(bundle_or_module, example_inputs)
    task = task or bundle_task
    if cfg.precision == "qat_int8" and not isinstance(quantizer_state, QuantizedGraph):
        raise ExportError(
            "precision 'qat_int8' needs quantizer_state=QuantizedGraph(graph_module, quantizer) "
            "from quantization-aware training; use 'int8' for post-training quantization"
        )
    if cfg.precision == "int8" and calibration is None:
        raise ExportError(
            "full int8 export needs calibration data (calibration=<Split>) to choose activation "
            "ranges; pass the training or validation split"
        )
    exporter = EXPORTERS.get(cfg.format)()
    if cfg.precision not in exporter.precisions:
        raise ExportError(
            f"the {cfg.format} exporter does not produce precision {cfg.precision!r}; it supports "
            f"{', '.join(exporter.precisions)}"
        )
    # Exporters never mutate their input.
    module = copy.deepcopy(module).eval().to("cpu")
    examples = tuple(t.detach().to("cpu") for t in examples)
    canonicalize(module, examples)
    request = ExportRequest(module, examples, cfg, calibration, quantizer_state)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        tmp_path = Path(tmp) / f"model.{EXTENSIONS[cfg.format]}"
        with torch.no_grad():
            exporter.write(request, tmp_path)
        digest = sha256_file(tmp_path)
        final = out / f"{digest}.{EXTENSIONS[cfg.format]}"
        tmp_path.replace(final)
    logger.info(
        "exported %s %s %s in %.1f s",
        name or bundle_name,
        cfg.format,
        cfg.precision,
        time.perf_counter() - started,
    )
    from host.export.runtime import describe_io

    inputs, outputs = describe_io(final)
    metrics: dict[str, float | int | str | None] = {
        "params": count_params(module),
        "macs": _safe_macs(count_macs, module, examples),
        "size_bytes": final.stat().st_size,
    }
    if cfg.precision == "int8_dynamic" and cfg.format == "tflite":
        metrics["int8_scheme"] = cfg.dynamic_scheme
    manifest = ArtifactManifest(
        sha256=digest,
        size_bytes=final.stat().st_size,
        format=cfg.format,
        precision=cfg.precision,
        name=(name or bundle_name)[:128],
        inputs=inputs,
        outputs=outputs,
        recipe=list(recipe or []),
        metrics=metrics,
        created=time.time(),
    )
    artifact = Artifact(final, manifest)
    if evaluate_on is not None and task is not None:
        result = evaluate_artifact(artifact, evaluate_on, task, reference=reference)
        metrics["host_metric"] = result.name
        metrics["host_metric_value"] = result.value
        manifest = ArtifactManifest(**{**_fields(manifest), "metrics": metrics})
        artifact = Artifact(final, manifest)
    atomic_write(artifact.manifest_path, encode_manifest(manifest))
    return artifact


def _fields(manifest: ArtifactManifest) -> dict[str, Any]:
    return {name: getattr(manifest, name) for name in manifest.__struct_fields__}


def _safe_macs(count_macs: Any, module: Any, examples: tuple[Any, ...]) -> int | None:
    try:
        return int(count_macs(module, examples))
    except Exception as exc:  # noqa: BLE001 - MACs are informative; never fail an export on them
        logger.warning("could not count MACs: %s", exc)
        return None


def _unpack(
    bundle_or_module: Any, example_inputs: tuple[Any, ...] | None
) -> tuple[Any, tuple[Any, ...], str, str | None]:
    import torch

    if isinstance(bundle_or_module, torch.nn.Module):
        if example_inputs is None:
            raise ExportError("exporting a bare nn.Module needs example_inputs")
        return bundle_or_module, tuple(example_inputs), type(bundle_or_module).__name__, None
    module = getattr(bundle_or_module, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise ExportError(
            f"cannot export {type(bundle_or_module).__name__}: give an nn.Module or a ModelBundle"
        )
    examples = (
        tuple(example_inputs) if example_inputs is not None else bundle_or_module.example_inputs
    )
    return module, examples, bundle_or_module.name, bundle_or_module.task


def run_artifact(path: str | Path, split: Split, *, threads: int = 1, batch: int = 1) -> np.ndarray:
    """Outputs of the exported file on every sample of ``split`` (float32, dequantized)."""
    from host.export.runtime import open_runner

    return open_runner(Path(path), threads=threads).run_split(split)


def run_artifact_all(path: str | Path, split: Split, *, threads: int = 1) -> list[np.ndarray]:
    """Every output of the exported file on every sample of ``split`` (float32, dequantized)."""
    from host.export.runtime import open_runner

    return open_runner(Path(path), threads=threads).run_split_all(split)


def evaluate_artifact(
    artifact: Artifact | str | Path,
    split: Split,
    task: str,
    reference: np.ndarray | None = None,
) -> MetricResult:
    """Score the exported file run through its own runtime: accuracy, agreement or cosine."""
    from host.metrics import score_outputs

    path = artifact.path if isinstance(artifact, Artifact) else Path(artifact)
    outputs = run_artifact(path, split)
    return score_outputs(outputs, split.labels, reference, task)


def measure_latency(
    path: str | Path, split: Split, threads: int = 1, runs: int = 50, warmup: int = 5
) -> dict[str, float]:
    """Host-side latency (ms per single-sample inference) of the exported file with its runtime."""
    from host.export.runtime import open_runner

    return open_runner(Path(path), threads=threads).latency(split, runs=runs, warmup=warmup)


__all__ = [
    "EXPORTERS",
    "Artifact",
    "ExportConfig",
    "ExportRequest",
    "Exporter",
    "QuantizedGraph",
    "evaluate_artifact",
    "export",
    "measure_latency",
    "run_artifact",
    "run_artifact_all",
]
