"""compress(): run a recipe on a model, export the candidate, measure it where it was exported.

The metrics of a candidate come from the exported file run through its own runtime on the host
(not only from the torch module), because quantization error only exists in the file. They are
scored on the eval set -- the test split, at most ``eval_samples`` of it -- with the task's metric
(host.metrics / shared.scoring), a 95% interval, and the warnings of :func:`eval_set_warnings`.

The task is the factory's (its info dict, or ``task=`` in the spec), ``task=`` here (``--task``),
or a guess from the outputs that :func:`resolve_task` states with how to override it.
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
from host.errors import CompressionError, DataError
from shared.errors import ConfigError

if TYPE_CHECKING:
    import numpy as np

    from host.data import DataSet, Split
    from host.export import Artifact
    from host.metrics import MetricResult, UserMetric
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

DEFAULT_EVAL_SAMPLES = 1000
# A classifier's class scores are rarely this many; an unlabelled output this wide is a feature
# vector far more often than a 100-way classifier.
WIDE_OUTPUT_DIMS = 100


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
    task_note: str | None = None
    eval_warnings: list[str] = field(default_factory=list)
    eval_samples: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "recipe": {"name": self.recipe.name, "steps": self.recipe.to_list()},
            "description": self.recipe.describe(),
            "model": self.bundle.name,
            "task": self.bundle.task,
            "task_note": self.task_note,
            "eval_samples": self.eval_samples,
            "eval_warnings": list(self.eval_warnings),
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


def reference_outputs(
    bundle: ModelBundle, data: DataSet, split: Split | None = None
) -> np.ndarray | None:
    """Outputs of the uncompressed model on ``split`` (default: the test split) when there are no
    labels to score against: a classifier's class labels and a regressor's real targets are the
    truth its outputs are scored on; an embedding's labels (topics) are not comparable to it."""
    from host.metrics import predict

    split = data.test if split is None else split
    if split.labels is not None and bundle.task in ("classification", "regression"):
        return None
    return predict(bundle.module, split)


def eval_split(data: DataSet, eval_samples: int | None = DEFAULT_EVAL_SAMPLES) -> Split:
    """The eval set: the whole test split, capped at ``eval_samples`` (None: no cap)."""
    if eval_samples is not None and eval_samples < 1:
        raise ConfigError(f"--eval-samples must be at least 1, got {eval_samples}")
    return data.test if eval_samples is None else data.test.subset(eval_samples)


def eval_set_warnings(
    split: Split,
    reference: np.ndarray | None,
    task: str,
    data: DataSet | None = None,
    predictions: np.ndarray | None = None,
) -> list[str]:
    """shared.scoring's warnings about an eval set, with where its samples came from.
    ``predictions``: the uncompressed model's outputs on ``split`` when it is scored on labels."""
    from shared import scoring

    warnings = scoring.eval_warnings(len(split), split.labels, reference, task, predictions)
    if data is not None and warnings and len(split) < scoring.MIN_TRUSTED_SAMPLES:
        total = len(data.train) + len(data.val) + len(data.test)
        warnings[0] += (
            f" (the eval set is the test split: {len(data.test)} of the {total} samples of "
            "--data; give more data, or an npz with ready test_x/test_y splits)"
        )
    return warnings


def _output_rows(bundle: ModelBundle, split: Split, limit: int = 8) -> np.ndarray:
    from host.metrics import predict

    out = predict(bundle.module, split.subset(limit))
    return out.reshape(len(out), -1)


def check_data_fits(bundle: ModelBundle, data: DataSet) -> None:
    """Run the model on two test samples; a DataError that says what does not fit otherwise."""
    from host.metrics import predict

    sample = data.test.subset(2)
    examples = bundle.example_inputs
    if len(sample.inputs) != len(examples):
        raise DataError(
            f"{bundle.name} takes {len(examples)} input(s) but --data gives {len(sample.inputs)} "
            f"array(s); give x (one input) or x0, x1, ... (one per input)"
        )
    try:
        outputs = predict(bundle.module, sample)
    except Exception as exc:
        wanted = ", ".join(
            f"{tuple(t.shape[1:])} {str(t.dtype).removeprefix('torch.')}" for t in examples
        )
        given = ", ".join(f"{a.shape[1:]} {a.dtype}" for a in sample.inputs)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(
            f"{bundle.name} fails on --data: it expects per-sample input(s) {wanted}, the data "
            f"has {given} ({type(exc).__name__}: {first})"
        ) from exc
    classes = data.num_classes
    width = int(outputs.reshape(len(outputs), -1).shape[1]) if len(outputs) else 0
    if bundle.task == "classification" and classes is not None and classes > width > 1:
        raise DataError(
            f"--data has labels up to {classes - 1} but {bundle.name} scores {width} classes; "
            f"build the model with num_classes={classes} (e.g. '{bundle.factory}?num_classes="
            f"{classes}' when its factory takes it)"
        )


def resolve_task(
    bundle: ModelBundle, data: DataSet, task: str | None = None
) -> tuple[ModelBundle, str | None]:
    """The bundle with its task settled, and a sentence saying so when the task is a guess.

    A given task (``task`` here, else the factory's) is kept. A guess of "class scores" (2-D
    output) is revised where the outputs say otherwise: rows of unit length are embeddings, and
    without labels an output of more than ``WIDE_OUTPUT_DIMS`` values is taken for an embedding.
    """
    import dataclasses

    from shared import scoring

    if task is not None:
        try:
            scoring.check_task(task)
        except scoring.ScoringError as exc:
            raise ConfigError(f"--task: {exc}") from exc
        check_targets(task, data)
        if task == bundle.task and not bundle.task_inferred:
            return bundle, None
        num_classes = bundle.num_classes if task == "classification" else None
        if task == "classification" and num_classes is None:
            num_classes = data.num_classes or int(_output_rows(bundle, data.test).shape[1])
        return (
            dataclasses.replace(bundle, task=task, num_classes=num_classes, task_inferred=False),
            None,
        )
    if not bundle.task_inferred:
        check_targets(bundle.task, data)
        return bundle, None
    import numpy as np

    guess, why = bundle.task, "its output is 2-D (class scores)"
    if guess == "classification" and data.has_labels and not data.train.class_labels:
        guess, why = "regression", "the labels are real values, not one class per sample"
    elif guess == "classification":
        rows = _output_rows(bundle, data.test)
        norms = np.linalg.norm(rows, axis=1)
        if len(rows) and np.allclose(norms, 1.0, atol=1e-3):
            guess, why = "embedding", "its output rows have unit length"
        elif not data.has_labels and rows.shape[1] > WIDE_OUTPUT_DIMS:
            guess = "embedding"
            why = f"its output has {rows.shape[1]} values per sample and the data has no labels"
    else:
        why = "its output is not 2-D class scores"
    note = (
        f"task {guess} (guessed: {why}); if that is wrong, pass --task "
        "classification|embedding|regression or give 'task' in the model factory's info dict"
    )
    logger.info("%s", note)
    settled = {"task": guess, "task_inferred": False}
    if guess != bundle.task:
        settled["num_classes"] = None
    return dataclasses.replace(bundle, **settled), note


def check_targets(task: str, data: DataSet) -> None:
    """A classifier needs one integer class label per sample; a DataError saying so otherwise."""
    labels = data.train.labels
    if task == "classification" and labels is not None and not data.train.class_labels:
        raise DataError(
            f"a classifier is scored on integer class labels, one per sample, but the data's "
            f"labels y are {labels.dtype} {tuple(labels.shape)}; give class indices (0..K-1) as "
            "an integer array, or pass --task regression for real-valued targets"
        )


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
        try:
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
        except (CompressionError, ConfigError):
            raise
        except Exception as exc:
            raise CompressionError(
                f"training {bundle.name} on the data failed: {type(exc).__name__}: {exc}"
            ) from exc
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
    task: str | None = None,
    metric: str | UserMetric | None = None,
    eval_samples: int | None = DEFAULT_EVAL_SAMPLES,
) -> CompressResult:
    """Compress ``model`` with ``recipe``, export it in each format to ``out_dir`` and measure it.

    ``out_dir`` also gets ``eval.npz``, the eval set (with labels, or the uncompressed model's
    outputs as ``ref``, and the task) to benchmark the files on a device with. A run that fails
    leaves nothing new in ``out_dir``.

    ``model``/``data`` are specs (``builtin:digits_cnn``, ``builtin:digits``) or already loaded
    objects (notebooks, tests). With ``latency_runs > 0`` each file's host latency is measured with
    its runtime on ``threads`` threads. ``weights`` (a state_dict file) or ``pretrain_epochs``
    (train the model on ``data`` first) give zoo models something worth compressing. ``task``
    overrides the model's task; ``metric`` (a ``pkg.mod:fn`` spec or a loaded UserMetric) is
    scored on the exported files too; ``eval_samples`` caps the eval set (None: the whole split).
    """
    out = Path(out_dir)
    before = set(out.iterdir()) if out.is_dir() else None
    try:
        return _compress(
            model, data, recipe, out, formats, progress=progress, seed=seed, evaluate=evaluate,
            latency_runs=latency_runs, threads=threads, weights=weights,
            pretrain_epochs=pretrain_epochs, pretrain_lr=pretrain_lr, task=task, metric=metric,
            eval_samples=eval_samples,
        )  # fmt: skip
    except BaseException:
        _remove_new_entries(out, before)
        raise


def _remove_new_entries(out: Path, before: set[Path] | None) -> None:
    """Undo what a failed run wrote: new entries of ``out``, and ``out`` itself if it was new."""
    import shutil

    if not out.is_dir():
        return
    if before is None:
        shutil.rmtree(out, ignore_errors=True)
        return
    for entry in set(out.iterdir()) - before:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _compress(
    model: str | ModelBundle,
    data: str | DataSet,
    recipe: Recipe | str | Sequence[TechniqueConfig],
    out: Path,
    formats: Sequence[str],
    *,
    progress: ProgressFn | None,
    seed: int,
    evaluate: bool,
    latency_runs: int,
    threads: int,
    weights: str | Path | None,
    pretrain_epochs: int,
    pretrain_lr: float,
    task: str | None,
    metric: str | UserMetric | None,
    eval_samples: int | None,
) -> CompressResult:
    from host.data import write_eval_npz
    from host.export import ExportConfig, export, measure_latency, run_artifact_all
    from host.metrics import (
        count_macs,
        count_params,
        load_metric,
        predict,
        predict_all,
        score_outputs,
        score_user_metric,
        user_outputs,
    )

    recipe = resolve_recipe(recipe)
    if not formats:
        raise ConfigError("no export format given; use tflite and/or onnx")
    user_metric = load_metric(metric) if isinstance(metric, str) else metric
    bundle, dataset = load_inputs(model, data)
    check_data_fits(bundle, dataset)
    bundle, task_note = resolve_task(bundle, dataset, task)
    split = eval_split(dataset, eval_samples)
    bundle = prepare_baseline(
        bundle,
        dataset,
        weights=weights,
        epochs=pretrain_epochs,
        lr=pretrain_lr,
        seed=seed,
        progress=progress,
    )
    reference = reference_outputs(bundle, dataset, split) if evaluate else None
    warnings: list[str] = []
    if evaluate:
        baseline_outputs = predict_all(bundle.module, split)
        # Scored on labels, the uncompressed model's own outputs show whether it predicts at all.
        predictions = baseline_outputs[0] if reference is None else None
        warnings = eval_set_warnings(split, reference, bundle.task, dataset, predictions)
        if user_metric is not None:
            # A metric that cannot score the uncompressed model's outputs fails here, not after
            # the compression.
            target = split.targets if split.labels is not None else reference
            user_metric(user_outputs(baseline_outputs), target)
    for warning in warnings:
        logger.warning("eval set: %s", warning)
    started = time.perf_counter()
    candidate, ctx = apply_recipe(bundle, dataset, recipe, progress=progress, seed=seed)
    metrics: dict[str, Any] = {"params": count_params(candidate.module)}
    try:
        metrics["macs"] = count_macs(candidate.module, candidate.example_inputs)
    except Exception as exc:  # noqa: BLE001 - MACs are informative; a fake-quant graph may refuse
        logger.warning("could not count MACs of %s: %s", candidate.name, exc)
        metrics["macs"] = None
    if evaluate:
        torch_metric = score_outputs(
            predict(candidate.module, split), split.labels, reference, candidate.task
        )
        metrics["torch_metric"] = torch_metric.name
        metrics["torch_metric_value"] = torch_metric.value
    metrics["compress_seconds"] = round(time.perf_counter() - started, 2)

    artifacts: list[Artifact] = []
    artifact_metrics: list[dict[str, Any]] = []
    name = f"{bundle.name}-{recipe.name or 'custom'}"
    for index, fmt in enumerate(formats):
        ctx.report(f"export {fmt} {ctx.precision}", index / len(formats))
        cfg = ExportConfig(
            format=fmt,
            precision=ctx.precision,
            calibration_samples=ctx.calibration_samples,
            float_layers=ctx.float_layers,
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
            every = run_artifact_all(artifact.path, split)
            scored = score_outputs(every[0], split.labels, reference, candidate.task)
            entry.update(_metric_entry(scored))
            extra = _manifest_metrics(scored, "host", warnings)
            if user_metric is not None:
                custom = score_user_metric(
                    user_metric, user_outputs(every), split.targets, reference
                )
                entry["user_metric"] = _metric_entry(custom)
                extra.update(_manifest_metrics(custom, "user", []))
            artifact = _with_metrics(artifact, extra)
        if latency_runs > 0:
            latency = measure_latency(artifact.path, split, threads=threads, runs=latency_runs)
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
        task_note=task_note,
        eval_warnings=warnings,
        eval_samples=len(split),
    )
    (out / f"{name}.result.json").write_text(json.dumps(result.to_dict(), indent=2, default=str))
    # The eval set a device benchmark needs (`edgetailor bench FILE --eval out/eval.npz`).
    write_eval_npz(split, out / "eval.npz", reference, task=candidate.task)
    return result


def _metric_entry(scored: MetricResult) -> dict[str, Any]:
    return {
        "metric": scored.name,
        "metric_value": scored.value,
        "metric_interval": None if scored.interval is None else list(scored.interval),
        "eval_samples": scored.samples,
    }


def _manifest_metrics(
    scored: MetricResult, prefix: str, warnings: list[str]
) -> dict[str, float | int | str | None]:
    """The manifest's flat metrics entries of a score (``host_metric``, ``host_metric_low``...)."""
    extra: dict[str, float | int | str | None] = {
        f"{prefix}_metric": scored.name,
        f"{prefix}_metric_value": scored.value,
        f"{prefix}_metric_low": scored.low,
        f"{prefix}_metric_high": scored.high,
    }
    if prefix == "host":
        extra["eval_samples"] = scored.samples
        extra["eval_warnings"] = " | ".join(warnings) if warnings else None
    return extra


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
