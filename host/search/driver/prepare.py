"""The host half a search starts from: the baseline model (trained once, its weights kept in the
search's work dir so every worker and every resume starts from the same model), the eval set the
boards score with, the layer groups and their sensitivity; and the builder that turns a plan into
an exported file with its host metric (cached by plan, so a file is built once)."""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.search.layers import layer_groups
from host.search.sensitivity import GroupSensitivity, measure_sensitivity

if TYPE_CHECKING:
    from host.campaign.candidates import Prepared
    from host.search.space import Plan
    from host.search.spec import SearchSpec
    from host.search.store import SearchStore

logger = logging.getLogger(__name__)


def prepare(
    spec: SearchSpec, work_dir: Path, sstore: SearchStore, search_id: str
) -> tuple[Prepared, list[GroupSensitivity]]:
    """The baseline, the eval set and the sensitivity (measured once; stored in the search)."""
    import torch

    from host.campaign.candidates import Prepared
    from host.compress.api import (
        check_data_fits,
        eval_set_warnings,
        eval_split,
        load_inputs,
        prepare_baseline,
        reference_outputs,
        resolve_task,
    )
    from host.data import write_eval_npz
    from host.metrics import predict_all, score_outputs

    work_dir.mkdir(parents=True, exist_ok=True)
    bundle, dataset = load_inputs(spec.model, spec.data)
    check_data_fits(bundle, dataset)
    bundle, _note = resolve_task(bundle, dataset, spec.task)
    weights = work_dir / "baseline.pt"
    if weights.is_file():
        bundle = prepare_baseline(bundle, dataset, weights=weights)
    else:
        bundle = prepare_baseline(
            bundle, dataset, weights=spec.weights, epochs=spec.pretrain_epochs, seed=spec.seed
        )
        tmp = weights.with_suffix(f".{os.getpid()}.tmp")
        torch.save(bundle.module.state_dict(), tmp)
        tmp.replace(weights)
    split = eval_split(dataset, spec.eval_samples)
    reference = reference_outputs(bundle, dataset, split)
    every = predict_all(bundle.module, split)
    baseline = score_outputs(every[0], split.labels, reference, bundle.task)
    warnings = eval_set_warnings(split, reference, bundle.task, dataset, every[0])
    eval_path = work_dir / "eval.npz"
    if not eval_path.is_file():
        tmp_eval = work_dir / f"eval.{os.getpid()}.tmp.npz"
        write_eval_npz(split, tmp_eval, reference, task=bundle.task)
        tmp_eval.replace(eval_path)
    prepared = Prepared(
        bundle,
        dataset,
        eval_path,
        baseline.value,
        baseline.name,
        split=split,
        reference=reference,
        baseline=baseline,
        baseline_outputs=every[0],
        eval_warnings=warnings,
    )
    stored = sstore.get_search(search_id)
    known = (stored.state if stored is not None else {}).get("sensitivity")
    if known:
        sensitivity = [GroupSensitivity.from_dict(s) for s in known]
    else:
        groups = layer_groups(bundle.module, example_inputs=bundle.example_inputs)
        sensitivity = measure_sensitivity(bundle, dataset, groups)
        sstore.update_search(search_id, state={"sensitivity": [s.to_dict() for s in sensitivity]})
    sstore.update_search(
        search_id,
        state={
            "baseline_metric": baseline.value,
            "metric": baseline.name,
            "task": bundle.task,
            "model_name": bundle.name,
            "eval_samples": len(split),
            "eval_warnings": warnings,
            "work_dir": str(work_dir),
        },
    )
    return prepared, sensitivity


@dataclass(frozen=True)
class Built:
    """A plan's exported file and what the host measured of it."""

    build_key: str
    path: str
    sha256: str
    format: str
    precision: str
    size_bytes: int
    params: int | None
    macs: int | None
    metric: str
    metric_value: float
    metric_interval: tuple[float, float] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **{k: getattr(self, k) for k in self.__dataclass_fields__},
            "metric_interval": list(self.metric_interval) if self.metric_interval else None,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Built:
        values = {k: data.get(k) for k in cls.__dataclass_fields__}
        interval = data.get("metric_interval")
        values["metric_interval"] = tuple(interval) if interval else None
        return cls(**values)


class Builder:
    """Compress and export plans on the host; one file per plan, kept across runs and workers."""

    def __init__(self, spec: SearchSpec, prepared: Prepared, work_dir: Path) -> None:
        self.spec = spec
        self.prepared = prepared
        self.out = work_dir / "artifacts"
        self.index = work_dir / "builds"
        self.index.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def build(self, plan: Plan) -> Built:
        """The plan's file and host metric; CompressionError/ExportError when it cannot be made."""
        from host.compress import compress

        entry = self.index / f"{plan.build_key}.json"
        if entry.is_file():
            built = Built.from_dict(json.loads(entry.read_text()))
            if Path(built.path).is_file():
                return built
        with self._lock:  # the compressors train on the host's cores: one build at a time
            result = compress(
                self.prepared.bundle,
                self.prepared.dataset,
                plan.recipe,
                self.out,
                formats=(plan.format,),
                seed=self.spec.seed,
                eval_samples=self.spec.eval_samples,
            )
        artifact = result.artifacts[0]
        metrics = result.artifact_metrics[0]
        interval = metrics.get("metric_interval")
        built = Built(
            build_key=plan.build_key,
            path=str(artifact.path.resolve()),
            sha256=artifact.manifest.sha256,
            format=artifact.manifest.format,
            precision=artifact.manifest.precision,
            size_bytes=artifact.manifest.size_bytes,
            params=result.metrics.get("params"),
            macs=result.metrics.get("macs"),
            metric=str(metrics.get("metric")),
            metric_value=float(metrics.get("metric_value")),
            metric_interval=tuple(interval) if interval else None,
            seconds=float(result.metrics.get("compress_seconds") or 0.0),
        )
        tmp = entry.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(built.to_dict()))
        tmp.replace(entry)
        return built


__all__ = ["Builder", "Built", "prepare"]
