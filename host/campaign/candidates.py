"""The host half of a campaign: the baseline and eval set, one candidate per recipe and format,
and screening on host metrics before any board spends time on a candidate."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.campaign.context import CampaignContext
from host.campaign.references import Reach, classify, stored_npz
from host.campaign.spec import CampaignError, resolve_space
from host.compress import QuantAwareTraining, Recipe, compress
from host.compress.api import (
    apply_recipe,
    check_data_fits,
    eval_set_warnings,
    eval_split,
    load_inputs,
    prepare_baseline,
    reference_outputs,
    resolve_task,
)
from host.data import write_eval_npz
from host.errors import CompressionError, ConfigError, ExportError
from host.metrics import load_metric, predict_all, score_outputs, score_user_metric, user_outputs
from host.store.campaigns import CandidateInfo

if TYPE_CHECKING:
    import numpy as np

    from host.data import DataSet, Split
    from host.metrics import MetricResult, UserMetric
    from host.models import ModelBundle

logger = logging.getLogger(__name__)


def screen_candidates(candidates: Sequence[CandidateInfo], margin: float) -> dict[str, str]:
    """Candidate id -> why it is dropped: another one of the same format is no larger, has no more
    MACs, and scores better on the host by more than ``margin``."""
    dropped: dict[str, str] = {}
    ok = [c for c in candidates if c.status in ("ok", "screened_out")]
    for a in ok:
        a_metric = a.host_metrics.get("host_metric_value")
        if a_metric is None:
            continue
        for b in ok:
            b_metric = b.host_metrics.get("host_metric_value")
            if b is a or b.format != a.format or b_metric is None:
                continue
            a_macs = a.host_metrics.get("macs") or math.inf
            b_macs = b.host_metrics.get("macs") or math.inf
            if b.size_bytes <= a.size_bytes and b_macs <= a_macs and b_metric > a_metric + margin:
                dropped[a.candidate_id] = (
                    f"dominated on the host by {b.candidate_id}: "
                    f"{a.host_metrics.get('host_metric', 'metric')} {b_metric:.4f} vs {a_metric:.4f} "
                    f"(margin {margin:g}) at {b.size_bytes} <= {a.size_bytes} bytes"
                )
                break
    return dropped


@dataclass
class Prepared:
    """The baseline model, the data, and the eval file every board scores with.

    ``baseline`` is the baseline's score in the metric the boards report (shared.scoring);
    with a user metric, ``user_baseline`` is its score in that metric, which then decides.
    """

    bundle: ModelBundle
    dataset: DataSet
    eval_path: Path
    baseline_metric: float | None
    metric_name: str | None
    split: Split | None = None
    reference: np.ndarray | None = None
    baseline: MetricResult | None = None
    user_metric: UserMetric | None = None
    user_baseline: MetricResult | None = None
    baseline_outputs: Any = None
    eval_warnings: list[str] = field(default_factory=list)

    @property
    def task(self) -> str:
        return self.bundle.task


class CandidateBuilder:
    """Steps 1-3 of a campaign; candidates already stored by an earlier run are kept."""

    def __init__(self, ctx: CampaignContext) -> None:
        self.ctx = ctx

    # -- 1. baseline and eval set --------------------------------------------------------------
    def prepare(self) -> Prepared:
        import torch

        spec = self.ctx.spec
        self.ctx.work_dir.mkdir(parents=True, exist_ok=True)
        user_metric = load_metric(spec.metric) if spec.metric else None
        self.ctx.emit("stage", f"loading {spec.model} and {spec.data}")
        data = spec.data
        if classify("data", data).reach is Reach.ARTIFACT:  # an .npz uploaded to the service
            data = str(stored_npz(self.ctx.store, data))
        bundle, dataset = load_inputs(spec.model, data)
        check_data_fits(bundle, dataset)
        bundle, task_note = resolve_task(bundle, dataset, spec.task)
        if task_note:
            self.ctx.emit("stage", task_note)
        weights = self.ctx.work_dir / "baseline.pt"
        if weights.is_file():
            bundle = prepare_baseline(bundle, dataset, weights=weights)
        else:
            self.ctx.emit("stage", f"preparing the baseline ({spec.pretrain_epochs} epochs)")
            bundle = prepare_baseline(
                bundle,
                dataset,
                weights=spec.weights,
                epochs=spec.pretrain_epochs,
                seed=spec.seed,
                progress=lambda label, frac: self.ctx.emit("compress", label, fraction=frac),
            )
            tmp = weights.with_suffix(".tmp")
            torch.save(bundle.module.state_dict(), tmp)
            tmp.replace(weights)
        split = eval_split(dataset, spec.eval_samples)
        reference = reference_outputs(bundle, dataset, split)
        every = predict_all(bundle.module, split)
        outputs = user_outputs(every)
        baseline = score_outputs(every[0], split.labels, reference, bundle.task)
        warnings = eval_set_warnings(split, reference, bundle.task, dataset, every[0])
        for warning in warnings:
            self.ctx.emit("stage", f"warning: {warning}", warning=warning)
        user_baseline = None
        if user_metric is not None:
            user_baseline = score_user_metric(user_metric, outputs, split.targets, reference)
        chance = 1.0 / bundle.num_classes if bundle.num_classes else 0.0
        if baseline.name == "accuracy" and baseline.value < 2 * chance:
            # Every candidate is measured against this baseline: an untrained one makes the whole
            # campaign meaningless, so say so loudly rather than let a 10 % model be "chosen".
            self.ctx.emit(
                "stage",
                f"warning: the baseline scores {baseline.value:.3f} accuracy, near "
                "chance: is the model trained? Give --weights FILE or --pretrain-epochs N",
            )
            logger.warning("baseline accuracy %.3f is near chance (%.3f)", baseline.value, chance)
        eval_path = self.ctx.work_dir / "eval.npz"
        if not eval_path.is_file():
            write_eval_npz(split, eval_path, reference, task=bundle.task)
        deciding = user_baseline or baseline
        self.ctx.cstore.update_campaign(
            self.ctx.campaign_id,
            state={
                "baseline_metric": deciding.value,
                "metric": deciding.name,
                "device_metric": baseline.name,
                "device_baseline_metric": baseline.value,
                "model_name": bundle.name,
                "task": bundle.task,
                "task_note": task_note,
                "eval_samples": len(split),
                "eval_warnings": warnings,
            },
        )
        return Prepared(
            bundle,
            dataset,
            eval_path,
            deciding.value,
            deciding.name,
            split=split,
            reference=reference,
            baseline=baseline,
            user_metric=user_metric,
            user_baseline=user_baseline,
            baseline_outputs=outputs,
            eval_warnings=warnings,
        )

    # -- 2. candidates -------------------------------------------------------------------------
    def _candidate_id(self, recipe: Recipe, fmt: str) -> str:
        return recipe.name if len(self.ctx.spec.formats) == 1 else f"{recipe.name}@{fmt}"

    def make_candidates(self, prepared: Prepared) -> None:
        recipes = resolve_space(self.ctx.spec.space)
        stored = {c.candidate_id: c for c in self.ctx.cstore.candidates(self.ctx.campaign_id)}
        out = self.ctx.work_dir / "artifacts"
        cache: dict[str, tuple[ModelBundle, float]] = {}
        for index, recipe in enumerate(recipes):
            ids = [self._candidate_id(recipe, fmt) for fmt in self.ctx.spec.formats]
            have = [stored.get(i) for i in ids]
            if all(
                c is not None and (c.status == "failed" or (c.path and Path(c.path).is_file()))
                for c in have
            ):
                continue  # made by an earlier run of this campaign
            label = f"[{index + 1}/{len(recipes)}] {recipe.name}"
            self.ctx.emit("compress", label, fraction=0.0, index=index, total=len(recipes))
            now = time.time()

            def report(step: str, frac: float, label: str = label, index: int = index) -> None:
                self.ctx.emit(
                    "compress", f"{label} {step}", fraction=frac, index=index, total=len(recipes)
                )

            try:
                start_from, rest, reused_s = self._shared_prefix(prepared, recipe, cache, report)
                result = compress(
                    start_from,
                    prepared.dataset,
                    rest,
                    out,
                    formats=self.ctx.spec.formats,
                    seed=self.ctx.spec.seed,
                    progress=report,
                    metric=prepared.user_metric,
                    eval_samples=self.ctx.spec.eval_samples,
                )
                result.metrics["compress_seconds"] = round(
                    result.metrics.get("compress_seconds", 0.0) + reused_s, 2
                )
            except (CompressionError, ExportError, ConfigError) as exc:
                logger.warning("candidate %s failed: %s", recipe.name, exc)
                for position, (cid, fmt) in enumerate(zip(ids, self.ctx.spec.formats, strict=True)):
                    self.ctx.cstore.put_candidate(
                        CandidateInfo(
                            self.ctx.campaign_id,
                            cid,
                            index * 16 + position,
                            recipe.name,
                            recipe.to_list(),
                            fmt,
                            recipe.precision,
                            "failed",
                            str(exc)[:2000],
                            None,
                            None,
                            0,
                            {},
                            now,
                        )
                    )
                self.ctx.emit(
                    "candidate",
                    f"{recipe.name} failed: {exc}",
                    candidate=recipe.name,
                    status="failed",
                )
                continue
            for position, (cid, artifact, entry) in enumerate(
                zip(ids, result.artifacts, result.artifact_metrics, strict=True)
            ):
                host = entry.get("user_metric") or entry
                metrics = {
                    "params": result.metrics.get("params"),
                    "macs": result.metrics.get("macs"),
                    "host_metric": host.get("metric"),
                    "host_metric_value": host.get("metric_value"),
                    "host_metric_interval": host.get("metric_interval"),
                    "torch_metric_value": result.metrics.get("torch_metric_value"),
                    "compress_seconds": result.metrics.get("compress_seconds"),
                }
                self.ctx.cstore.put_candidate(
                    CandidateInfo(
                        self.ctx.campaign_id,
                        cid,
                        index * 16 + position,
                        recipe.name,
                        recipe.to_list(),
                        artifact.manifest.format,
                        artifact.manifest.precision,
                        "ok",
                        None,
                        artifact.manifest.sha256,
                        str(artifact.path.resolve()),
                        artifact.manifest.size_bytes,
                        metrics,
                        now,
                    )
                )
                self.ctx.emit(
                    "candidate",
                    f"{cid}: {artifact.manifest.size_bytes} bytes, "
                    f"{host.get('metric')} {host.get('metric_value')}",
                    candidate=cid,
                    status="ok",
                )
        self.ctx.emit(
            "compress", "candidates ready", fraction=1.0, index=len(recipes), total=len(recipes)
        )

    def _shared_prefix(
        self,
        prepared: Prepared,
        recipe: Recipe,
        cache: dict[str, tuple[ModelBundle, float]],
        report: Callable[[str, float], None],
    ) -> tuple[ModelBundle, Recipe, float]:
        """(model to export from, steps left, seconds of the reused part).

        A search space pairs every pruning/distillation/low-rank choice with every precision, so
        the same weight-changing steps recur; they run once and each precision exports from their
        result (same seed, same weights: the precisions are compared on the same model). Recipes
        with QAT, and data without labels (whose reference outputs must come from the original
        model), run whole.
        """

        split = next(
            (i for i, step in enumerate(recipe.steps) if not step.changes_weights),
            len(recipe.steps),
        )
        prefix, rest = recipe.steps[:split], recipe.steps[split:]
        if (
            not prefix
            or any(isinstance(s, QuantAwareTraining) for s in recipe.steps)
            or any(s.changes_weights for s in rest)
            or not prepared.dataset.has_labels
        ):
            return prepared.bundle, recipe, 0.0
        key = json.dumps([step.to_dict() for step in prefix], sort_keys=True)
        if key not in cache:
            started = time.perf_counter()
            bundle, _ctx = apply_recipe(
                prepared.bundle,
                prepared.dataset,
                Recipe(steps=prefix),
                progress=report,
                seed=self.ctx.spec.seed,
            )
            cache[key] = (bundle, time.perf_counter() - started)
        bundle, seconds = cache[key]
        return bundle, Recipe(steps=rest, name=recipe.name), seconds

    # -- 3. screening --------------------------------------------------------------------------
    def screen(self) -> list[CandidateInfo]:
        candidates = self.ctx.cstore.candidates(self.ctx.campaign_id)
        dropped = screen_candidates(candidates, self.ctx.spec.screen_margin)
        survivors = []
        for cand in candidates:
            if cand.status == "failed":
                continue
            if cand.candidate_id in dropped:
                if cand.status != "screened_out":
                    self.ctx.cstore.set_candidate_status(
                        self.ctx.campaign_id,
                        cand.candidate_id,
                        "screened_out",
                        dropped[cand.candidate_id],
                    )
                    self.ctx.emit(
                        "candidate",
                        f"{cand.candidate_id} screened out: {dropped[cand.candidate_id]}",
                        candidate=cand.candidate_id,
                        status="screened_out",
                    )
                continue
            if cand.status != "ok":
                self.ctx.cstore.set_candidate_status(
                    self.ctx.campaign_id, cand.candidate_id, "ok", None
                )
            survivors.append(cand)
        if not survivors:
            raise CampaignError(
                "no candidate survived compression and export; see the candidates' reasons in "
                "`edgetailor campaign --resume ID --json` and fix the search space"
            )
        return survivors
