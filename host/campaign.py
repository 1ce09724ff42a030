"""Campaigns: candidates x devices, measured on the real boards, resumable from the database.

A :class:`CampaignSpec` names a model, a data set, a search space (a registered name or a JSON file
that expands into recipes), the target devices and the constraints. :func:`run_campaign`:

1. trains/loads the baseline once (its weights are kept in the campaign's work dir, so a resumed
   campaign compresses the same model) and writes the eval set the devices score with;
2. compresses and exports one candidate per recipe and format, skipping those already stored;
3. screens them on the host: export failures are dropped, and so is a candidate that another one
   dominates on host metrics (no larger, no more MACs, and better by more than ``screen_margin``);
4. benchmarks every survivor on every target device: one job at a time per device (a benchmark
   must not disturb another), devices in parallel, per-job timeout and retries; a device that is
   offline is waited for up to ``offline_deadline_s``, after which its remaining jobs end with
   status ``offline``;
5. selects per device under the constraints (host.select) and stores the selection.

Every step is written to the database (host.store.campaigns) as it happens. Run the same campaign
id again (``--resume ID``) after a host crash and finished jobs are kept as they are; a job that was
sent but not answered is first waited for under its old job id (the agent keeps its result in its
outbox until this host acknowledges it), and only sent again when no answer comes. Artifacts are
content-addressed: a device that already holds one does not fetch it again (its TransferStats say
``already_stored``), and the store remembers which artifacts each device holds.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.compress import (
    SEARCH_SPACES,
    ChannelPrune,
    Choice,
    Distill,
    FineTune,
    Int8Full,
    LowRank,
    Recipe,
    SearchSpace,
)
from host.errors import (
    CompressionError,
    ConfigError,
    DeviceUnavailableError,
    ExportError,
    HostError,
    JobFailedError,
    JobTimeoutError,
)
from host.report import json_safe
from host.store.campaigns import (
    FINAL_JOB_STATES,
    JOB_FAILED,
    JOB_OFFLINE,
    JOB_OK,
    JOB_PENDING,
    JOB_RUNNING,
    CampaignJobInfo,
    CampaignStore,
    CandidateInfo,
)
from shared.errors import ValidationError
from shared.results import BenchmarkResult, from_data, to_data
from shared.topics import check_device_id

if TYPE_CHECKING:
    from host.data import DataSet
    from host.fleet import Fleet
    from host.models import ModelBundle
    from host.select import DeviceSelection, ResultRow
    from host.store import Store

logger = logging.getLogger(__name__)

DEFAULT_WORK_ROOT = Path("~/.edgetailor/campaigns")
# On top of the benchmark's own timeout: the transfer, the worker start, the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
POLL_S = 0.5

# Small enough for a laptop (or the 2-core demo machine) in a few minutes, and still one of each
# technique family, alone and combined with full int8.
SEARCH_SPACES.add("demo", SearchSpace(
    "demo", "none / prune / distill / low-rank, each at fp32 and full int8 (short fine-tunes)",
    (
        (
            Choice("orig"),
            Choice("prune50", (ChannelPrune(ratio=0.5), FineTune(epochs=3))),
            Choice("distill50", (Distill(student=0.5, epochs=8),)),
            Choice("lowrank50", (LowRank(ratio=0.5), FineTune(epochs=2))),
        ),
        (Choice("fp32"), Choice("int8", (Int8Full(),))),
    ),
))


class CampaignError(HostError):
    """A campaign cannot start or continue (unknown id, spec mismatch, no devices, ...)."""


# --------------------------------------------------------------------------------------------------
# The spec.


@dataclass(frozen=True)
class CampaignSpec:
    """What to compress, where to measure it, and what counts as good enough."""

    model: str
    data: str
    space: str = "default"
    devices: tuple[str, ...] = ("all",)
    constraints: tuple[str, ...] = ()
    objective: str = "max_metric"
    formats: tuple[str, ...] = ("tflite",)
    pretrain_epochs: int = 0  # zoo models start untrained: campaigns on them pass e.g. 15
    weights: str | None = None
    seed: int = 0
    runs: int = 50
    min_s: float = 1.0
    warmup_s: float = 0.5
    threads: int | None = None
    eval_limit: int | None = None
    job_timeout_s: float = 300.0
    retries: int = 1
    offline_deadline_s: float = 120.0
    screen_margin: float = 0.02

    def __post_init__(self) -> None:
        if not self.devices:
            raise ConfigError("a campaign needs target devices: --devices all or --devices ID,ID")
        if "all" not in self.devices:
            for device in self.devices:
                check_device_id(device)
        for name, value in (("runs", self.runs), ("retries", self.retries + 1)):
            if value < 1:
                raise ConfigError(f"campaign {name}={value} is invalid: it must be positive")
        for name, value in (("job_timeout_s", self.job_timeout_s),
                            ("offline_deadline_s", self.offline_deadline_s)):
            if not value > 0:
                raise ConfigError(f"campaign {name}={value} is invalid: it must be > 0 seconds")
        if self.screen_margin < 0:
            raise ConfigError(f"screen_margin={self.screen_margin} must be >= 0")
        from host.select import Constraint, Objective

        for text in self.constraints:
            Constraint.parse(text)
        Objective.parse(self.objective)

    @property
    def all_devices(self) -> bool:
        return "all" in self.devices

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("devices", "constraints", "formats"):
            data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"campaign spec has unknown field(s) {', '.join(unknown)}")
        values = dict(data)
        for key in ("devices", "constraints", "formats"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def parse_devices(text: str) -> tuple[str, ...]:
    """``all`` or ``ID,ID,...`` from the command line."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ConfigError("--devices needs `all` or a comma-separated list of device ids")
    if "all" in items and len(items) > 1:
        raise ConfigError("--devices is either `all` or a list of device ids, not both")
    return items


_CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def _check_campaign_id(campaign_id: str) -> str:
    # It names a directory and database keys.
    if not _CAMPAIGN_ID.match(campaign_id):
        raise ConfigError(
            f"invalid campaign id {campaign_id!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return campaign_id


def new_campaign_id() -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"c-{stamp}-{uuid.uuid4().hex[:4]}"


def resolve_space(space: str) -> list[Recipe]:
    """Recipes of a registered search space, or of a JSON file.

    The file holds a list of recipes, ``{"recipes": [...]}``, or ``{"stages": [[{"label": ...,
    "steps": [...]}, ...], ...]}`` (one alternative per stage, every combination).
    """
    if space in SEARCH_SPACES:
        return SEARCH_SPACES.get(space).expand()
    path = Path(space)
    if not path.is_file():
        raise ConfigError(
            f"search space {space!r} is neither a known name ({', '.join(SEARCH_SPACES)}) nor a "
            "JSON file; see `edgetailor compress --list`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read search space {path}: {exc}") from exc
    if isinstance(data, dict) and "stages" in data:
        stages = []
        for s_index, stage in enumerate(data["stages"]):
            if not isinstance(stage, list) or not stage:
                raise ConfigError(f"{path}: stage {s_index + 1} must be a non-empty list of choices")
            choices = []
            for choice in stage:
                if not isinstance(choice, dict) or "label" not in choice:
                    raise ConfigError(f"{path}: a choice is {{'label': ..., 'steps': [...]}}")
                recipe = Recipe.from_obj(choice.get("steps", []))
                choices.append(Choice(str(choice["label"]), recipe.steps))
            stages.append(tuple(choices))
        recipes = SearchSpace(str(data.get("name", path.stem)), "", tuple(stages)).expand()
    else:
        items = data.get("recipes") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ConfigError(
                f"{path}: a search space file is a list of recipes, {{'recipes': [...]}} or "
                "{'stages': [...]}"
            )
        recipes = []
        for index, item in enumerate(items):
            try:
                recipe = Recipe.from_obj(item)
            except ConfigError as exc:
                raise ConfigError(f"{path}: recipe {index + 1}: {exc}") from exc
            recipes.append(recipe if recipe.name else replace(recipe, name=f"r{index + 1}"))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: recipe names must be unique, got {names}")
    return recipes


# --------------------------------------------------------------------------------------------------
# Progress events.


@dataclass(frozen=True)
class CampaignEvent:
    """``kind``: stage | compress | candidate | job. ``data`` carries what changed."""

    kind: str
    message: str
    data: dict[str, Any] = field(default_factory=dict)


ProgressFn = Callable[[CampaignEvent], None]


# --------------------------------------------------------------------------------------------------
# Screening.


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


# --------------------------------------------------------------------------------------------------
# The runner.


@dataclass
class _Prepared:
    bundle: ModelBundle
    dataset: DataSet
    eval_path: Path
    baseline_metric: float | None
    metric_name: str | None


class CampaignRunner:
    """Runs (or resumes) one campaign against a connected Fleet; state lives in the Store."""

    def __init__(
        self,
        spec: CampaignSpec,
        store: Store,
        fleet: Fleet,
        *,
        campaign_id: str | None = None,
        work_dir: str | Path | None = None,
        progress: ProgressFn | None = None,
        device_wait_s: float = 30.0,
    ) -> None:
        self.spec = spec
        self.store = store
        self.cstore = CampaignStore(store)
        self.fleet = fleet
        self.campaign_id = campaign_id or new_campaign_id()
        _check_campaign_id(self.campaign_id)
        self.work_dir = Path(work_dir or DEFAULT_WORK_ROOT / self.campaign_id).expanduser()
        self._progress = progress
        self.device_wait_s = device_wait_s
        self._lock = threading.Lock()

    # -- events --------------------------------------------------------------------------------
    def _emit(self, kind: str, message: str, **data: Any) -> None:
        logger.info("%s: %s", kind, message)
        if self._progress is not None:
            try:
                self._progress(CampaignEvent(kind, message, data))
            except Exception:  # a display bug must not stop a campaign
                logger.exception("campaign progress callback failed")

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        existing = self.cstore.get_campaign(self.campaign_id)
        if existing is not None and existing.spec != self.spec.to_dict():
            raise CampaignError(
                f"campaign {self.campaign_id} exists with another spec; resume it with "
                f"`--resume {self.campaign_id}` (which reuses its spec) or pick a new --campaign-id"
            )
        resumed = existing is not None
        if resumed and existing.state.get("work_dir"):
            self.work_dir = Path(existing.state["work_dir"])
        self.cstore.create_campaign(self.campaign_id, self.spec.to_dict())
        self.cstore.update_campaign(self.campaign_id, state={"work_dir": str(self.work_dir)})
        self._emit("stage", f"campaign {self.campaign_id} {'resumed' if resumed else 'started'}",
                   campaign=self.campaign_id, resumed=resumed)

        self.cstore.update_campaign(self.campaign_id, status="compressing")
        prepared = self._prepare()
        self._make_candidates(prepared)
        survivors = self._screen()
        candidates_s = time.monotonic() - started
        devices = self._resolve_devices()
        self.cstore.update_campaign(self.campaign_id, status="measuring",
                                    state={"devices": devices})
        self._measure(survivors, devices, prepared)
        outcome = self.outcome()
        outcome["campaign"]["timings"] = {
            "candidates_s": round(candidates_s, 1),
            "measure_s": round(time.monotonic() - started - candidates_s, 1),
        }
        self.cstore.update_campaign(
            self.campaign_id, status="done", selection=outcome["selection"],
            state={"seconds_last_run": round(time.monotonic() - started, 1)},
        )
        outcome["campaign"]["status"] = "done"
        outcome["campaign"]["seconds"] = round(time.monotonic() - started, 1)
        self._emit("stage", f"campaign {self.campaign_id} done", seconds=outcome["campaign"]["seconds"])
        return outcome

    # -- 1. baseline and eval set --------------------------------------------------------------
    def _prepare(self) -> _Prepared:
        import torch

        from host.compress.api import load_inputs, prepare_baseline, reference_outputs
        from host.data import write_eval_npz
        from host.metrics import evaluate_module

        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._emit("stage", f"loading {self.spec.model} and {self.spec.data}")
        bundle, dataset = load_inputs(self.spec.model, self.spec.data)
        weights = self.work_dir / "baseline.pt"
        if weights.is_file():
            bundle = prepare_baseline(bundle, dataset, weights=weights)
        else:
            self._emit("stage", f"preparing the baseline ({self.spec.pretrain_epochs} epochs)")
            bundle = prepare_baseline(
                bundle, dataset, weights=self.spec.weights, epochs=self.spec.pretrain_epochs,
                seed=self.spec.seed,
                progress=lambda label, frac: self._emit("compress", label, fraction=frac),
            )
            tmp = weights.with_suffix(".tmp")
            torch.save(bundle.module.state_dict(), tmp)
            tmp.replace(weights)
        reference = reference_outputs(bundle, dataset)
        baseline = evaluate_module(bundle.module, dataset.test, bundle.task, reference)
        chance = 1.0 / bundle.num_classes if bundle.num_classes else 0.0
        if baseline.name == "accuracy" and baseline.value < 2 * chance:
            # Every candidate is measured against this baseline: an untrained one makes the whole
            # campaign meaningless, so say so loudly rather than let a 10 % model be "chosen".
            self._emit("stage", f"warning: the baseline scores {baseline.value:.3f} accuracy, near "
                       "chance: is the model trained? Give --weights FILE or --pretrain-epochs N")
            logger.warning("baseline accuracy %.3f is near chance (%.3f)", baseline.value, chance)
        eval_path = self.work_dir / "eval.npz"
        if not eval_path.is_file():
            write_eval_npz(dataset.test, eval_path, reference, limit=self.spec.eval_limit)
        self.cstore.update_campaign(self.campaign_id, state={
            "baseline_metric": baseline.value, "metric": baseline.name, "model_name": bundle.name,
        })
        return _Prepared(bundle, dataset, eval_path, baseline.value, baseline.name)

    # -- 2. candidates -------------------------------------------------------------------------
    def _candidate_id(self, recipe: Recipe, fmt: str) -> str:
        return recipe.name if len(self.spec.formats) == 1 else f"{recipe.name}@{fmt}"

    def _make_candidates(self, prepared: _Prepared) -> None:
        from host.compress import compress

        recipes = resolve_space(self.spec.space)
        stored = {c.candidate_id: c for c in self.cstore.candidates(self.campaign_id)}
        out = self.work_dir / "artifacts"
        cache: dict[str, tuple[ModelBundle, float]] = {}
        for index, recipe in enumerate(recipes):
            ids = [self._candidate_id(recipe, fmt) for fmt in self.spec.formats]
            have = [stored.get(i) for i in ids]
            if all(c is not None and (c.status == "failed" or (c.path and Path(c.path).is_file()))
                   for c in have):
                continue  # made by an earlier run of this campaign
            label = f"[{index + 1}/{len(recipes)}] {recipe.name}"
            self._emit("compress", label, fraction=0.0, index=index, total=len(recipes))
            now = time.time()

            def report(step: str, frac: float, label: str = label, index: int = index) -> None:
                self._emit("compress", f"{label} {step}", fraction=frac, index=index,
                           total=len(recipes))

            try:
                start_from, rest, reused_s = self._shared_prefix(prepared, recipe, cache, report)
                result = compress(start_from, prepared.dataset, rest, out,
                                  formats=self.spec.formats, seed=self.spec.seed, progress=report)
                result.metrics["compress_seconds"] = round(
                    result.metrics.get("compress_seconds", 0.0) + reused_s, 2)
            except (CompressionError, ExportError, ConfigError) as exc:
                logger.warning("candidate %s failed: %s", recipe.name, exc)
                for position, (cid, fmt) in enumerate(zip(ids, self.spec.formats, strict=True)):
                    self.cstore.put_candidate(CandidateInfo(
                        self.campaign_id, cid, index * 16 + position, recipe.name,
                        recipe.to_list(), fmt, recipe.precision, "failed", str(exc)[:2000],
                        None, None, 0, {}, now,
                    ))
                self._emit("candidate", f"{recipe.name} failed: {exc}", candidate=recipe.name,
                           status="failed")
                continue
            for position, (cid, artifact, entry) in enumerate(
                zip(ids, result.artifacts, result.artifact_metrics, strict=True)
            ):
                metrics = {
                    "params": result.metrics.get("params"),
                    "macs": result.metrics.get("macs"),
                    "host_metric": entry.get("metric"),
                    "host_metric_value": entry.get("metric_value"),
                    "torch_metric_value": result.metrics.get("torch_metric_value"),
                    "compress_seconds": result.metrics.get("compress_seconds"),
                }
                self.cstore.put_candidate(CandidateInfo(
                    self.campaign_id, cid, index * 16 + position, recipe.name, recipe.to_list(),
                    artifact.manifest.format, artifact.manifest.precision, "ok", None,
                    artifact.manifest.sha256, str(artifact.path.resolve()),
                    artifact.manifest.size_bytes, metrics, now,
                ))
                self._emit("candidate", f"{cid}: {artifact.manifest.size_bytes} bytes, "
                           f"{entry.get('metric')} {entry.get('metric_value')}",
                           candidate=cid, status="ok")
        self._emit("compress", "candidates ready", fraction=1.0, index=len(recipes),
                   total=len(recipes))

    def _shared_prefix(
        self, prepared: _Prepared, recipe: Recipe, cache: dict[str, tuple[ModelBundle, float]],
        report: Callable[[str, float], None],
    ) -> tuple[ModelBundle, Recipe, float]:
        """(model to export from, steps left, seconds of the reused part).

        A search space pairs every pruning/distillation/low-rank choice with every precision, so
        the same weight-changing steps recur; they run once and each precision exports from their
        result (same seed, same weights: the precisions are compared on the same model). Recipes
        with QAT, and data without labels (whose reference outputs must come from the original
        model), run whole.
        """
        from host.compress import QuantAwareTraining
        from host.compress.api import apply_recipe

        split = next((i for i, step in enumerate(recipe.steps) if not step.changes_weights),
                     len(recipe.steps))
        prefix, rest = recipe.steps[:split], recipe.steps[split:]
        if (not prefix or any(isinstance(s, QuantAwareTraining) for s in recipe.steps)
                or any(s.changes_weights for s in rest) or not prepared.dataset.has_labels):
            return prepared.bundle, recipe, 0.0
        key = json.dumps([step.to_dict() for step in prefix], sort_keys=True)
        if key not in cache:
            started = time.perf_counter()
            bundle, _ctx = apply_recipe(prepared.bundle, prepared.dataset, Recipe(steps=prefix),
                                        progress=report, seed=self.spec.seed)
            cache[key] = (bundle, time.perf_counter() - started)
        bundle, seconds = cache[key]
        return bundle, Recipe(steps=rest, name=recipe.name), seconds

    # -- 3. screening --------------------------------------------------------------------------
    def _screen(self) -> list[CandidateInfo]:
        candidates = self.cstore.candidates(self.campaign_id)
        dropped = screen_candidates(candidates, self.spec.screen_margin)
        survivors = []
        for cand in candidates:
            if cand.status == "failed":
                continue
            if cand.candidate_id in dropped:
                if cand.status != "screened_out":
                    self.cstore.set_candidate_status(self.campaign_id, cand.candidate_id,
                                                     "screened_out", dropped[cand.candidate_id])
                    self._emit("candidate", f"{cand.candidate_id} screened out: "
                               f"{dropped[cand.candidate_id]}", candidate=cand.candidate_id,
                               status="screened_out")
                continue
            if cand.status != "ok":
                self.cstore.set_candidate_status(self.campaign_id, cand.candidate_id, "ok", None)
            survivors.append(cand)
        if not survivors:
            raise CampaignError(
                "no candidate survived compression and export; see the candidates' reasons in "
                "`edgetailor campaign --resume ID --json` and fix the search space"
            )
        return survivors

    # -- 4. devices ----------------------------------------------------------------------------
    def _resolve_devices(self) -> list[str]:
        stored = self.cstore.get_campaign(self.campaign_id)
        if stored is not None and stored.state.get("devices"):
            return list(stored.state["devices"])  # a resumed "all" keeps its original targets
        if not self.spec.all_devices:
            return list(self.spec.devices)
        self.fleet.wait_synced()
        deadline = time.monotonic() + self.device_wait_s
        while True:
            online = sorted(d for d, rec in self.fleet.devices().items() if rec.online and rec.birth)
            if online or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
        if not online:
            raise CampaignError(
                f"--devices all found no online device on {self.fleet.address} (base topic "
                f"{self.fleet.topics.base!r}) within {self.device_wait_s:.0f} s; start an agent "
                "(`edgetailor-agent --broker ... --id ...`) or name the devices"
            )
        return online

    # -- 5. measuring --------------------------------------------------------------------------
    def _measure(self, survivors: list[CandidateInfo], devices: list[str], prepared: _Prepared) -> None:
        for device in devices:
            for cand in survivors:
                self.cstore.ensure_job(self.campaign_id, cand.candidate_id, device, cand.position)
            for job in self.cstore.jobs(self.campaign_id, device):
                if job.status == JOB_OFFLINE:
                    # It never ran; a resume is the user saying the device may be back.
                    self.cstore.job_retry(self.campaign_id, job.candidate_id, device,
                                          job.error or "device was offline")
        by_id = {c.candidate_id: c for c in survivors}
        total = len(survivors) * len(devices)
        done = sum(1 for j in self.cstore.jobs(self.campaign_id) if j.status in FINAL_JOB_STATES
                   and j.candidate_id in by_id)
        self._emit("job", f"measuring {len(survivors)} candidates on {len(devices)} devices",
                   done=done, total=total)
        self._done = done
        self._total = total
        threads = [
            threading.Thread(target=self._device_loop, args=(device, by_id, prepared),
                             name=f"campaign-{device}", daemon=True)
            for device in devices
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

    def _count_done(self, device: str, candidate: str, status: str) -> None:
        with self._lock:
            self._done += 1
            done = self._done
        self._emit("job", f"{device}: {candidate} {status}", device=device, candidate=candidate,
                   status=status, done=done, total=self._total)

    def _device_loop(self, device: str, by_id: dict[str, CandidateInfo], prepared: _Prepared) -> None:
        try:
            jobs = [j for j in self.cstore.jobs(self.campaign_id, device)
                    if j.candidate_id in by_id and j.status not in FINAL_JOB_STATES]
            for index, job in enumerate(jobs):
                status = self._run_job(job, by_id[job.candidate_id], prepared)
                if status == JOB_OFFLINE:
                    error = (f"device {device} stayed offline for more than "
                             f"{self.spec.offline_deadline_s:.0f} s; start its agent and resume "
                             f"with `edgetailor campaign --resume {self.campaign_id}`")
                    for rest in jobs[index:]:
                        self.cstore.job_finished(self.campaign_id, rest.candidate_id, device,
                                                 JOB_OFFLINE, error=error)
                        self._count_done(device, rest.candidate_id, JOB_OFFLINE)
                    return
                self._count_done(device, job.candidate_id, status)
        except Exception as exc:  # one device's bug must not hang the others' campaign
            logger.exception("campaign worker for %s failed", device)
            for job in self.cstore.jobs(self.campaign_id, device):
                if job.status not in FINAL_JOB_STATES:
                    self.cstore.job_finished(self.campaign_id, job.candidate_id, device,
                                             JOB_FAILED, error=f"host error: {exc}")

    def _wait_online(self, device: str) -> bool:
        record = self.fleet.registry.wait_for(device, self.spec.offline_deadline_s)
        if record is None:
            logger.warning("device %s offline past the deadline", device)
        return record is not None

    def _run_job(self, job: CampaignJobInfo, cand: CandidateInfo, prepared: _Prepared) -> str:
        device = job.device_id
        attempts = job.attempts
        last_error = job.error or ""
        if job.status == JOB_PENDING and (orphan := self._unrecorded_job(device, cand)):
            # Sent by an earlier run that died before it could note the job id here.
            self.cstore.job_sent(self.campaign_id, cand.candidate_id, device, orphan)
            job = replace(job, status=JOB_RUNNING, fleet_job_id=orphan, attempts=attempts + 1)
            attempts += 1
        if job.status == JOB_RUNNING and job.fleet_job_id:
            # Sent by an earlier host run: its answer may be stored already or still in the
            # agent's outbox (re-sent until acknowledged); do not benchmark it twice.
            self._emit("job", f"{device}: waiting for {cand.candidate_id} sent before the restart",
                       device=device, candidate=cand.candidate_id, status="adopted")
            # The agent may still be fetching from the host run that died: serve its files again.
            self.fleet.offer(cand.path)
            if prepared.eval_path is not None:
                self.fleet.offer(prepared.eval_path)
            outcome = self._await_stored(job.fleet_job_id, device)
            if outcome is not None and outcome[0] == JOB_OK:
                return self._record(job, cand, prepared, *outcome)
            last_error = (outcome[2] or "failed") if outcome is not None else (
                f"job {job.fleet_job_id} was sent before a restart and never answered")
            # A failure of the adopted job (e.g. its transfer starved while no host served it)
            # gets the same retries as any other.
            self.cstore.job_retry(self.campaign_id, cand.candidate_id, device, last_error)
        while attempts <= self.spec.retries:
            if not self._wait_online(device):
                return JOB_OFFLINE
            held = self.cstore.held(device)
            if cand.sha256 in held:
                logger.info("%s already holds %s; it will not be fetched again", device, cand.sha256[:12])
            try:
                handle = self.fleet.submit_benchmark(
                    device, cand.path, eval_path=prepared.eval_path, threads=self.spec.threads,
                    runs=self.spec.runs, timeout_s=self.spec.job_timeout_s,
                    warmup_s=self.spec.warmup_s, min_s=self.spec.min_s,
                    eval_limit=self.spec.eval_limit, device_timeout_s=5.0,
                )
            except DeviceUnavailableError:
                continue  # went offline between the wait and the send: wait again
            attempts += 1
            self.cstore.job_sent(self.campaign_id, cand.candidate_id, device, handle.job_id)
            self._emit("job", f"{device}: {cand.candidate_id} sent (attempt {attempts})",
                       device=device, candidate=cand.candidate_id, status="sent")
            outcome = self._await_handle(handle, device)
            if outcome == JOB_OFFLINE:
                return JOB_OFFLINE
            if outcome is None:
                last_error = (f"no answer within {self.spec.job_timeout_s + TRANSFER_ALLOWANCE_S:.0f} s"
                              f" (job {handle.job_id})")
            else:
                status, data, error = outcome
                if status == JOB_OK:
                    return self._record(job, cand, prepared, status, data, error)
                last_error = error or "failed"
            if attempts <= self.spec.retries:
                logger.warning("%s on %s: %s; retrying", cand.candidate_id, device, last_error)
                self.cstore.job_retry(self.campaign_id, cand.candidate_id, device, last_error)
        self.cstore.job_finished(self.campaign_id, cand.candidate_id, device, JOB_FAILED,
                                 row=self._failed_row(cand, device, prepared, last_error),
                                 error=last_error)
        return JOB_FAILED

    def _unrecorded_job(self, device: str, cand: CandidateInfo) -> str | None:
        campaign = self.cstore.get_campaign(self.campaign_id)
        if campaign is None or cand.sha256 is None:
            return None
        known = {jid for j in self.cstore.jobs(self.campaign_id) for jid in j.job_ids}
        for fleet_job in self.store.list_jobs(device):
            if (fleet_job.kind == "benchmark" and fleet_job.model_sha256 == cand.sha256
                    and fleet_job.submitted >= campaign.created and fleet_job.job_id not in known):
                return fleet_job.job_id
        return None

    def _await_handle(self, handle: Any, device: str) -> tuple[str, dict[str, Any] | None, str | None] | str | None:
        """(status, data, error) of the job; JOB_OFFLINE when the device stayed away; None: timeout.

        Time while the device is offline does not count against the job's timeout: the agent
        journals the job and runs it again when it restarts.
        """
        budget = self.spec.job_timeout_s + TRANSFER_ALLOWANCE_S
        offline_since: float | None = None
        last = time.monotonic()
        while True:
            try:
                result = handle.result(timeout=POLL_S)
                return JOB_OK, to_data(result), None
            except JobFailedError as exc:
                return JOB_FAILED, None, str(exc)
            except JobTimeoutError:
                pass
            now = time.monotonic()
            record = self.fleet.registry.get(device)
            if record is not None and not record.online:
                offline_since = offline_since or now
                if now - offline_since > self.spec.offline_deadline_s:
                    return JOB_OFFLINE
            else:
                offline_since = None
                budget -= now - last
                if budget <= 0:
                    return None
            last = now

    def _await_stored(self, job_id: str, device: str) -> tuple[str, dict[str, Any] | None, str | None] | None:
        deadline = time.monotonic() + self.spec.job_timeout_s + TRANSFER_ALLOWANCE_S
        while time.monotonic() < deadline:
            stored = self.store.get_result(job_id)
            if stored is not None:
                if stored.status == "ok":
                    try:
                        from_data(stored.data or {}, BenchmarkResult)
                    except ValidationError as exc:
                        return JOB_FAILED, None, f"bad stored result: {exc}"
                    return JOB_OK, stored.data, None
                return JOB_FAILED, None, f"[{stored.error_code}] {stored.error_message}"
            time.sleep(POLL_S)
        return None

    def _record(self, job: CampaignJobInfo, cand: CandidateInfo, prepared: _Prepared, status: str,
                data: dict[str, Any] | None, error: str | None) -> str:
        if status != JOB_OK or data is None:
            self.cstore.job_finished(self.campaign_id, cand.candidate_id, job.device_id, JOB_FAILED,
                                     row=self._failed_row(cand, job.device_id, prepared, error or ""),
                                     error=error)
            return JOB_FAILED
        from host.select import ResultRow

        result = from_data(data, BenchmarkResult)
        row = ResultRow.from_benchmark(
            result, candidate=cand.candidate_id, device=job.device_id, recipe=cand.recipe_name,
            format=cand.format, precision=cand.precision, baseline_metric=prepared.baseline_metric,
        ).to_dict()
        row.update(
            job_id=result.job_id,
            runtime=result.runtime,
            threads=result.threads,
            load_ms=result.load_ms,
            board=result.board,
            transfers=[to_data(t) for t in result.transfers],
        )
        self.cstore.mark_held(job.device_id, [t.sha256 for t in result.transfers])
        self.cstore.job_finished(self.campaign_id, cand.candidate_id, job.device_id, JOB_OK, row=row)
        return JOB_OK

    def _failed_row(self, cand: CandidateInfo, device: str, prepared: _Prepared, error: str) -> dict[str, Any]:
        from host.select import ResultRow

        return ResultRow.failed(
            candidate=cand.candidate_id, device=device, error=error, recipe=cand.recipe_name,
            format=cand.format, precision=cand.precision, size_bytes=cand.size_bytes,
            metric=prepared.metric_name or "metric",
        ).to_dict()

    # -- 6. outcome ----------------------------------------------------------------------------
    def outcome(self) -> dict[str, Any]:
        return campaign_outcome(self.cstore, self.campaign_id)


# --------------------------------------------------------------------------------------------------
# Reading a stored campaign back (CLI --json, report, status).


def campaign_rows(cstore: CampaignStore, campaign_id: str) -> list[ResultRow]:
    """One select.ResultRow per (candidate, device) job that ended; offline jobs as failed rows."""
    from host.select import ResultRow

    campaign = cstore.get_campaign(campaign_id)
    metric = (campaign.state.get("metric") if campaign else None) or "metric"
    rows = []
    for job in cstore.jobs(campaign_id):
        if job.status not in FINAL_JOB_STATES:
            continue
        if job.row is not None:
            rows.append(ResultRow.from_dict(job.row))
        else:
            rows.append(ResultRow.failed(candidate=job.candidate_id, device=job.device_id,
                                         error=job.error or job.status, metric=metric))
    return rows


def campaign_selection(cstore: CampaignStore, campaign_id: str,
                       constraints: Sequence[str] | None = None,
                       objective: str | None = None) -> tuple[list[ResultRow], dict[str, DeviceSelection]]:
    from host.select import select

    campaign = load_campaign(cstore, campaign_id)
    spec = CampaignSpec.from_dict(campaign.spec)
    rows = campaign_rows(cstore, campaign_id)
    devices = campaign.state.get("devices") or sorted({r.device for r in rows})
    selections = select(rows, constraints if constraints is not None else spec.constraints,
                        objective or spec.objective, devices=devices)
    return rows, selections


def load_campaign(cstore: CampaignStore, campaign_id: str) -> Any:
    campaign = cstore.get_campaign(campaign_id)
    if campaign is None:
        known = ", ".join(c.campaign_id for c in cstore.list_campaigns()[-5:]) or "none"
        raise CampaignError(
            f"no campaign {campaign_id!r} in the database {cstore.store._safe_url()}; recent "
            f"ones: {known}; pass the same --db the campaign used"
        )
    return campaign


def campaign_outcome(cstore: CampaignStore, campaign_id: str) -> dict[str, Any]:
    """The JSON document of `edgetailor campaign --json`."""
    campaign = load_campaign(cstore, campaign_id)
    spec = CampaignSpec.from_dict(campaign.spec)
    rows, selections = campaign_selection(cstore, campaign_id)
    jobs = cstore.jobs(campaign_id)
    candidates = [
        {
            "id": c.candidate_id,
            "recipe": c.recipe_name,
            "steps": c.recipe,
            "format": c.format,
            "precision": c.precision,
            "size_bytes": c.size_bytes,
            "sha256": c.sha256,
            "path": c.path,
            "status": c.status,
            "reason": c.reason,
            **{k: v for k, v in c.host_metrics.items()},
        }
        for c in cstore.candidates(campaign_id)
    ]
    results = []
    transfers = {"fetched": 0, "already_stored": 0}
    for job in jobs:
        if job.status not in FINAL_JOB_STATES:
            continue
        row = dict(job.row) if job.row else {
            "candidate": job.candidate_id, "device": job.device_id, "latency_ms": {},
            "peak_rss_mb": None, "metric": campaign.state.get("metric"), "metric_value": None,
            "status": "failed", "error": job.error,
        }
        row["job_status"] = job.status
        row["job_ids"] = list(job.job_ids)
        row["attempts"] = job.attempts
        for transfer in row.get("transfers", []):
            transfers["already_stored" if transfer.get("already_stored") else "fetched"] += 1
        results.append(row)
    devices: dict[str, dict[str, Any]] = {}
    for device in campaign.state.get("devices") or []:
        states = [j.status for j in jobs if j.device_id == device]
        counts = {s: states.count(s) for s in sorted(set(states))}
        if states and all(s == JOB_OFFLINE for s in states):
            status = "offline"
        elif states and all(s == JOB_OK for s in states):
            status = "measured"
        elif any(s in (JOB_PENDING, JOB_RUNNING) for s in states):
            status = "incomplete"
        else:
            status = "partial"
        devices[device] = {"status": status, "jobs": counts}
    selection = {
        device: {
            "candidate": sel.chosen_id,
            "reason": sel.reason,
            "latency_p90_ms": sel.candidate.latency_ms.get("p90") if sel.candidate else None,
            "metric": sel.candidate.metric if sel.candidate else None,
            "metric_value": sel.candidate.metric_value if sel.candidate else None,
        }
        for device, sel in selections.items()
    }
    return {
        "campaign": {
            "id": campaign_id,
            "model": spec.model,
            "data": spec.data,
            "space": spec.space,
            "constraints": list(spec.constraints),
            "objective": spec.objective,
            "status": campaign.status,
            "created": campaign.created,
            "baseline_metric": campaign.state.get("baseline_metric"),
            "metric": campaign.state.get("metric"),
            "work_dir": campaign.state.get("work_dir"),
            "spec": spec.to_dict(),
        },
        "candidates": candidates,
        "results": json_safe(results),
        "devices": devices,
        "transfers": transfers,
        "selection": json_safe(selection),
    }


def write_campaign_report(cstore: CampaignStore, campaign_id: str, out_dir: str | Path) -> Path:
    """The HTML report (results table, Pareto plot per device) of a stored campaign."""
    from host.report import write_report

    outcome = campaign_outcome(cstore, campaign_id)
    rows, selections = campaign_selection(cstore, campaign_id)
    meta = dict(outcome["campaign"])
    meta["date"] = meta["created"]
    return write_report(out_dir, meta, rows, selections)


def run_campaign(
    spec: CampaignSpec,
    store: Store,
    fleet: Fleet,
    *,
    campaign_id: str | None = None,
    work_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run or resume a campaign; returns the document `edgetailor campaign --json` prints."""
    return CampaignRunner(spec, store, fleet, campaign_id=campaign_id, work_dir=work_dir,
                          progress=progress).run()


__all__ = [
    "CampaignError",
    "CampaignEvent",
    "CampaignRunner",
    "CampaignSpec",
    "campaign_outcome",
    "campaign_rows",
    "campaign_selection",
    "new_campaign_id",
    "parse_devices",
    "resolve_space",
    "run_campaign",
    "screen_candidates",
    "write_campaign_report",
]
