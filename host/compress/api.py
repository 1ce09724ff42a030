"""compress(): run a recipe on a model, export the candidate, measure it where it was exported.

The metrics of a candidate come from the exported file run through its own runtime on the host
(not only from the torch module), because quantization error only exists in the file.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.compress.config import Recipe, TechniqueConfig
from host.compress.context import CompressContext, ProgressFn, StepRecord
from host.compress.handlers import HANDLERS
from host.compress.recipes import resolve_recipe
from host.errors import CompressionError
from shared.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from host.data import DataSet
    from host.export import Artifact
    from host.models import ModelBundle

logger = logging.getLogger(__name__)


@dataclass
class CompressResult:
    """A candidate: the compressed model, its exported files, what it measured, what each step did."""

    recipe: Recipe
    bundle: ModelBundle
    artifacts: list[Artifact]
    metrics: dict[str, Any]
    steps: list[StepRecord]
    precision: str = "fp32"
    artifact_metrics: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": {"name": self.recipe.name, "steps": self.recipe.to_list()},
            "description": self.recipe.describe(),
            "model": self.bundle.name,
            "precision": self.precision,
            "metrics": dict(self.metrics),
            "artifacts": [
                {"path": str(a.path), "format": a.manifest.format, "sha256": a.manifest.sha256, **m}
                for a, m in zip(self.artifacts, self.artifact_metrics, strict=True)
            ],
            "steps": [s.to_dict() for s in self.steps],
        }


def load_inputs(model: str | ModelBundle, data: str | DataSet) -> tuple[ModelBundle, DataSet]:
    from host.data import load_data
    from host.models import load_model

    bundle = load_model(model) if isinstance(model, str) else model
    dataset = load_data(data) if isinstance(data, str) else data
    return bundle, dataset


def reference_outputs(bundle: ModelBundle, data: DataSet) -> np.ndarray | None:
    """Outputs of the uncompressed model on the test split when there are no labels to score against."""
    from host.metrics import predict

    if data.test.labels is not None and bundle.task == "classification":
        return None
    return predict(bundle.module, data.test)


def prepare_baseline(
    bundle: ModelBundle,
    data: DataSet,
    *,
    weights: str | Path | None = None,
    epochs: int = 0,
    lr: float = 3e-3,
    seed: int = 0,
    progress: ProgressFn | None = None,
) -> ModelBundle:
    """The uncompressed model the recipe starts from: loaded weights and/or trained on ``data``."""
    import copy
    import dataclasses

    import torch

    from host.train import fit

    module = bundle.module
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise ConfigError(f"weights file {path} does not exist")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            module = copy.deepcopy(module)
            module.load_state_dict(state)
        except Exception as exc:
            raise ConfigError(
                f"cannot load weights {path} into {bundle.name}: {exc}; save them with "
                "torch.save(model.state_dict(), path) from the same architecture"
            ) from exc
    if epochs > 0:
        module = fit(
            copy.deepcopy(module),
            data,
            epochs,
            lr,
            seed=seed,
            task=bundle.task,
            progress=(lambda label, frac: progress(f"pretrain {label}", frac))
            if progress
            else None,
        )
        module = module.cpu().eval()
    if module is bundle.module:
        return bundle
    return dataclasses.replace(bundle, module=module)


def apply_recipe(
    bundle: ModelBundle,
    data: DataSet,
    recipe: Recipe,
    *,
    progress: ProgressFn | None = None,
    seed: int = 0,
) -> tuple[ModelBundle, CompressContext]:
    """Run every step of ``recipe``; returns the candidate and the context (precision, log)."""
    from host.metrics import count_params

    ctx = CompressContext(data=data, teacher=bundle, progress=progress, seed=seed)
    current = bundle
    for index, step in enumerate(recipe.steps):
        handler = HANDLERS.get(step.name)
        label = f"[{index + 1}/{len(recipe.steps)}] {step.name}"
        ctx.report(label, 0.0)
        ctx.begin(step.name, count_params(current.module))
        try:
            current = handler(current, step, ctx)
        except (CompressionError, ConfigError):
            raise
        except Exception as exc:
            raise CompressionError(
                f"step {index + 1} ({step.name}) failed on {current.name}: {type(exc).__name__}: {exc}"
            ) from exc
        record = ctx.end(count_params(current.module))
        logger.info("%s done in %.1f s", label, record.seconds)
        ctx.report(label, 1.0)
    return current, ctx


def compress(
    model: str | ModelBundle,
    data: str | DataSet,
    recipe: Recipe | str | Sequence[TechniqueConfig],
    out_dir: str | Path,
    formats: Sequence[str] = ("tflite",),
    *,
    progress: ProgressFn | None = None,
    seed: int = 0,
    evaluate: bool = True,
    latency_runs: int = 0,
    threads: int = 1,
    weights: str | Path | None = None,
    pretrain_epochs: int = 0,
    pretrain_lr: float = 3e-3,
) -> CompressResult:
    """Compress ``model`` with ``recipe``, export it in each format to ``out_dir`` and measure it.

    ``out_dir`` also gets ``eval.npz``, the test split (with labels, or the uncompressed model's
    outputs as ``ref``) to benchmark the files on a device with.

    ``model``/``data`` are specs (``builtin:digits_cnn``, ``builtin:digits``) or already loaded
    objects (notebooks, tests). With ``latency_runs > 0`` each file's host latency is measured with
    its runtime on ``threads`` threads. ``weights`` (a state_dict file) or ``pretrain_epochs``
    (train the model on ``data`` first) give zoo models something worth compressing.
    """
    from host.data import write_eval_npz
    from host.export import ExportConfig, evaluate_artifact, export, measure_latency
    from host.metrics import count_macs, count_params, evaluate_module

    recipe = resolve_recipe(recipe)
    if not formats:
        raise ConfigError("no export format given; use tflite and/or onnx")
    bundle, dataset = load_inputs(model, data)
    bundle = prepare_baseline(
        bundle,
        dataset,
        weights=weights,
        epochs=pretrain_epochs,
        lr=pretrain_lr,
        seed=seed,
        progress=progress,
    )
    reference = reference_outputs(bundle, dataset) if evaluate else None
    started = time.perf_counter()
    candidate, ctx = apply_recipe(bundle, dataset, recipe, progress=progress, seed=seed)
    metrics: dict[str, Any] = {"params": count_params(candidate.module)}
    try:
        metrics["macs"] = count_macs(candidate.module, candidate.example_inputs)
    except Exception as exc:  # noqa: BLE001 - MACs are informative; a fake-quant graph may refuse
        logger.warning("could not count MACs of %s: %s", candidate.name, exc)
        metrics["macs"] = None
    if evaluate:
        torch_metric = evaluate_module(candidate.module, dataset.test, candidate.task, reference)
        metrics["torch_metric"] = torch_metric.name
        metrics["torch_metric_value"] = torch_metric.value
    metrics["compress_seconds"] = round(time.perf_counter() - started, 2)

    out = Path(out_dir)
    artifacts: list[Artifact] = []
    artifact_metrics: list[dict[str, Any]] = []
    name = f"{bundle.name}-{recipe.name or 'custom'}"
    for index, fmt in enumerate(formats):
        ctx.report(f"export {fmt} {ctx.precision}", index / len(formats))
        cfg = ExportConfig(
            format=fmt, precision=ctx.precision, calibration_samples=ctx.calibration_samples
        )
        artifact = export(
            candidate,
            None,
            cfg,
            out,
            calibration=dataset.train,
            recipe=recipe.to_list(),
            quantizer_state=ctx.quantizer_state,
            name=name,
            task=candidate.task,
        )
        entry: dict[str, Any] = {
            "size_bytes": artifact.manifest.size_bytes,
            "precision": artifact.manifest.precision,
        }
        if evaluate:
            result = evaluate_artifact(artifact, dataset.test, candidate.task, reference)
            entry["metric"] = result.name
            entry["metric_value"] = result.value
            artifact = _with_metrics(
                artifact, {"host_metric": result.name, "host_metric_value": result.value}
            )
        if latency_runs > 0:
            latency = measure_latency(
                artifact.path, dataset.test, threads=threads, runs=latency_runs
            )
            entry["latency"] = latency
            entry["threads"] = threads
        artifacts.append(artifact)
        artifact_metrics.append(entry)
        ctx.report(f"export {fmt} {ctx.precision}", (index + 1) / len(formats))
    result = CompressResult(
        recipe=recipe,
        bundle=candidate,
        artifacts=artifacts,
        metrics=metrics,
        steps=ctx.log,
        precision=ctx.precision,
        artifact_metrics=artifact_metrics,
    )
    (out / f"{name}.result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    # The eval set a device benchmark needs (`edgetailor bench FILE --eval out/eval.npz`).
    write_eval_npz(dataset.test, out / "eval.npz", reference)
    return result


def _with_metrics(artifact: Artifact, extra: dict[str, Any]) -> Artifact:
    """Add host-measured metrics to an artifact's manifest and rewrite it beside the file."""
    from host.export import Artifact as ArtifactCls
    from shared.manifest import ArtifactManifest, encode_manifest

    manifest = artifact.manifest
    fields = {n: getattr(manifest, n) for n in manifest.__struct_fields__}
    fields["metrics"] = {**manifest.metrics, **extra}
    updated = ArtifactCls(artifact.path, ArtifactManifest(**fields))
    updated.manifest_path.write_bytes(encode_manifest(updated.manifest))
    return updated
