"""Cheap first, boards last: the loop of one device's search.

Each trial (an Optuna ask) is built and scored on the host (a short recovery, the exported file's
metric on the eval set), and its p90 latency and peak memory are predicted for the device's board
class. It goes to the board only when

* the board's class is unknown to the predictor (such a board is measured fully: no trial is
  skipped on a prediction), or
* it is predicted feasible (its predicted p90 and peak memory meet every constraint on them, the
  host metric does not clearly break a quality constraint) and promising (no measured result of
  this device is as accurate and faster than its predicted p90), and the device's budget allows
  (one measurement is kept for the final checks).

Otherwise it is skipped, with the reason recorded. The same variant is never measured twice: the
measurement is claimed in the database (host.search.store), whichever worker or run asks. When the
trials are done, the best predicted-but-unmeasured trials are measured while budget is left; the
choice per device is then made by host.select among measured results only, so it never rests on a
prediction alone.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from host.campaign.quality import Judgement, QualityError
from host.errors import CompressionError, ConfigError, ExportError
from host.search.driver.prepare import Builder, Built, prepare
from host.search.measure import BoardMeter, MeasureError
from host.search.predictor.data import FeatureCache, board_class_of, fit_predictor, predict_file
from host.search.predictor.model import Prediction, Predictor
from host.search.report import measured_pairs, measured_rows
from host.search.space import DeviceSpace, Plan
from host.search.store import (
    DECISION_FAILED,
    DECISION_MEASURED,
    DECISION_REUSED,
    DECISION_SKIPPED,
    MEASURED,
    OPEN_MEASUREMENT_STATES,
    SearchStore,
    TrialInfo,
    Variant,
)
from host.search.study import DeviceStudy, make_storage
from host.select import Constraint, Objective, ResultRow, figure_value, select

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.search.predictor.features import BoardClass
    from host.search.sensitivity import GroupSensitivity
    from host.search.spec import SearchSpec
    from host.store import Store
    from shared.results import BenchmarkResult

logger = logging.getLogger(__name__)

SearchProgress = Callable[[str, dict[str, Any]], None]
LATENCY_FIGURES = ("latency_p90_ms", "latency_p50_ms", "latency_mean_ms", "latency_p95_ms")
MEMORY_FIGURES = ("peak_rss_mb",)


@dataclass
class DeviceState:
    device: str
    space: DeviceSpace
    board: BoardClass | None
    study: DeviceStudy
    constraints: list[Constraint]
    formats: set[str] | None = None


class SearchLoop:
    """Runs (or resumes, or joins as a second worker) one search; state lives in the database."""

    def __init__(
        self,
        spec: SearchSpec,
        store: Store,
        fleet: Fleet,
        search_id: str,
        work_dir: Path,
        *,
        progress: SearchProgress | None = None,
        worker: str | None = None,
        predictor_exclude: set[str] | None = None,
        heartbeat_s: int | None = None,
        grace_s: int | None = None,
    ) -> None:
        self.spec = spec
        self.store = store
        self.sstore = SearchStore(store)
        self.fleet = fleet
        self.search_id = search_id
        self.work_dir = work_dir
        self.progress = progress or (lambda _kind, _data: None)
        self.worker = worker or f"w-{uuid.uuid4().hex[:8]}"
        self.predictor_exclude = set(predictor_exclude or ())
        self._storage_args = {
            k: v for k, v in (("heartbeat_s", heartbeat_s), ("grace_s", grace_s)) if v is not None
        }
        self.predictor: Predictor = Predictor(spec.seed)
        self._predictor_lock = threading.Lock()
        self.features: FeatureCache = FeatureCache(self.sstore)
        self.objective = Objective.parse(spec.objective)

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        from host.search.report import search_outcome

        started = time.monotonic()
        existing = self.sstore.get_search(self.search_id)
        if existing is not None and existing.spec != self.spec.to_dict():
            raise ConfigError(
                f"search {self.search_id} exists with another spec; resume it with --resume "
                f"{self.search_id} or pick a new --search-id"
            )
        self.sstore.create_search(self.search_id, self.spec.to_dict())
        self.sstore.update_search(self.search_id, status="running", state={"error": None})
        self.progress("stage", {"message": f"search {self.search_id}: preparing the baseline"})
        try:
            prepared, sensitivity = prepare(self.spec, self.work_dir, self.sstore, self.search_id)
            self.progress(
                "stage", {"message": "sensitivity measured", "sensitivity": len(sensitivity)}
            )
            self.builder = Builder(self.spec, prepared, self.work_dir)
            self.prepared = prepared
            self.meter = BoardMeter(
                self.fleet,
                self.store,
                eval_path=prepared.eval_path,
                task=prepared.task,
                runs=self.spec.runs,
                min_s=self.spec.min_s,
                timeout_s=self.spec.job_timeout_s,
            )
            self.refit()
            storage = make_storage(self.store.url, **self._storage_args)
            states = [self._device_state(d, sensitivity, storage) for d in self.spec.devices]
            threads = [
                threading.Thread(
                    target=self._device_loop,
                    args=(state,),
                    name=f"search-{state.device}",
                    daemon=True,
                )
                for state in states
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for state in states:
                self._final_checks(state)
            selection = self.selection()
        except Exception as exc:
            self.sstore.update_search(
                self.search_id,
                status="failed",
                state={"error": f"{exc}"[:2000] or type(exc).__name__},
            )
            raise
        self.sstore.update_search(
            self.search_id,
            status="done",
            selection={d: s.to_dict() for d, s in selection.items()},
            state={
                "predictor": self.predictor.error_summary(),
                "seconds": round(time.monotonic() - started, 1),
            },
        )
        self.progress("stage", {"message": f"search {self.search_id} done"})
        return search_outcome(self.store, self.search_id)

    # -- setup ---------------------------------------------------------------------------------
    def _device_state(
        self, device: str, sensitivity: list[GroupSensitivity], storage: Any
    ) -> DeviceState:
        record = self.fleet.registry.wait_for(device, 30.0)
        birth = getattr(record, "birth", None) if record is not None else None
        formats = (
            {fmt for rt in birth.runtimes for fmt in rt.formats}
            if birth is not None and birth.runtimes
            else None
        )
        cores = birth.cores if birth is not None else 1
        space = DeviceSpace.for_device(self.spec, sensitivity, cores, formats)
        study = DeviceStudy(
            storage, self.search_id, device, self.spec.sampler, self.spec.seed, self.spec.trials
        )
        study.warm_start(space.uniform_policies())
        constraints = [Constraint.parse(c) for c in self.spec.constraints_for(device)]
        return DeviceState(
            device, space, board_class_of(self.store, device), study, constraints, formats
        )

    def refit(self) -> None:
        """Fit the predictor again on every stored result (new ones included)."""
        from host.search.store import SearchStore

        predictor = fit_predictor(
            self.store,
            SearchStore(self.store),
            exclude_sha256=self.predictor_exclude,
            seed=self.spec.seed,
        )
        with self._predictor_lock:
            self.predictor = predictor

    # -- the loop ------------------------------------------------------------------------------
    def _device_loop(self, state: DeviceState) -> None:
        while state.study.finished() < self.spec.trials:
            trial = state.study.ask()
            with state.study.heartbeat(trial):
                try:
                    self._trial(state, trial)
                except Exception as exc:  # one trial's bug must not end the device's search
                    logger.exception("trial %d on %s failed", trial.number, state.device)
                    state.study.fail(trial, f"host error: {exc}")

    def used(self, device: str) -> int:
        """Board measurements this search has made or started on ``device`` (every worker's)."""
        return len(self.sstore.measurements(self.search_id, device))

    def _trial(self, state: DeviceState, trial: Any) -> None:
        plan = state.space.suggest(trial)
        base = dict(
            search_id=self.search_id, device_id=state.device, trial_number=trial.number,
            params=dict(trial.params), variant=plan.variant, recipe=plan.recipe.to_list(),
            worker=self.worker, created=time.time(),
        )  # fmt: skip
        try:
            built = self.builder.build(plan)
        except (CompressionError, ExportError, ConfigError) as exc:
            reason = f"could not be built: {exc}"[:1000]
            self.sstore.put_trial(
                TrialInfo(
                    **base,
                    sha256=None,
                    host={},
                    prediction=None,
                    decision=DECISION_FAILED,
                    reason=reason,
                )
            )
            state.study.fail(trial, reason)
            self._emit(state, trial.number, DECISION_FAILED, reason)
            return
        prediction = self._predict(built, plan, state)
        estimate = self._estimate_row(built, plan, state.device, prediction)
        decision, reason = self._decide(state, built, plan, prediction, estimate)
        row: ResultRow | None = None
        if decision == DECISION_MEASURED:
            row, decision, outcome = self._measure(state, plan, built, trial.number)
            reason = f"{reason}; {outcome}"
        host = {**built.to_dict(), "recipe_name": plan.recipe.name}
        info = TrialInfo(
            **base,
            sha256=built.sha256,
            host=host,
            prediction=prediction.to_dict(),
            decision=decision,
            reason=reason,
        )
        self.sstore.put_trial(info)
        self._emit(state, trial.number, decision, reason)
        if row is not None and row.ok:
            state.study.tell(
                trial,
                row.metric_value,
                row.latency_ms.get("p90", math.nan),
                self._violations(state, row),
            )
            return
        if decision == DECISION_SKIPPED and prediction.known:
            latency = prediction.latency_p90_ms or math.inf
            violations = self._violations(state, estimate)
            state.study.tell(trial, built.metric_value, latency, violations)
            return
        state.study.fail(trial, reason)

    def _emit(self, state: DeviceState, number: int, decision: str, reason: str) -> None:
        self.progress(
            "trial",
            {"device": state.device, "trial": number, "decision": decision, "reason": reason,
             "used": self.used(state.device), "budget": self.spec.budget},
        )  # fmt: skip

    # -- predictions and decisions -------------------------------------------------------------
    def _predict(self, built: Built, plan: Plan, state: DeviceState) -> Prediction:
        graph = self.features.get(built.sha256, built.path, built.precision)
        if state.board is None:
            return Prediction(False, "unknown", reason=f"{state.device} never announced its board")
        if graph is None:
            return Prediction(False, state.board.key, reason="the file's graph could not be read")
        with self._predictor_lock:
            predictor = self.predictor
        return predict_file(predictor, graph, state.board, plan.threads, plan.runtime)

    def _estimate_row(
        self, built: Built, plan: Plan, device: str, prediction: Prediction
    ) -> ResultRow:
        """The trial as the host sees it: host metric, predicted latency and memory."""
        baseline = self.prepared.baseline_metric
        interval = built.metric_interval
        drop = (
            (baseline - interval[1], baseline - interval[0])
            if interval and baseline is not None
            else None
        )
        p90 = prediction.latency_p90_ms if prediction.known else math.nan
        return ResultRow(
            candidate=plan.label, device=device, recipe=plan.recipe.name, format=plan.format,
            precision=built.precision, size_bytes=built.size_bytes,
            latency_ms={"p90": p90 if p90 is not None else math.nan},
            peak_rss_mb=prediction.peak_rss_mb if prediction.known and prediction.peak_rss_mb else math.nan,
            metric=built.metric, metric_value=built.metric_value, baseline_metric=baseline,
            metric_interval=interval, drop_interval=drop, threads=plan.threads, runtime=plan.runtime,
        )  # fmt: skip

    def _decide(
        self,
        state: DeviceState,
        built: Built,
        plan: Plan,
        prediction: Prediction,
        estimate: ResultRow,
    ) -> tuple[str, str]:
        budget_left = self.spec.budget - self.used(state.device)
        if not prediction.known:
            if budget_left <= 0:
                return (
                    DECISION_SKIPPED,
                    f"budget spent; the board class is unknown ({prediction.reason})",
                )
            return (
                DECISION_MEASURED,
                f"the board class is unknown to the predictor, so it is measured ({prediction.reason})",
            )
        for constraint in state.constraints:
            if constraint.name in LATENCY_FIGURES + MEMORY_FIGURES:
                continue
            verdict, violation = constraint.judge(estimate, strict=self.spec.strict)
            if verdict == "missed":
                return (
                    DECISION_SKIPPED,
                    f"host metric breaks {constraint}: {violation.describe() if violation else ''}",
                )
        predicted = {
            "latency_p90_ms": prediction.latency_p90_ms,
            "peak_rss_mb": prediction.peak_rss_mb,
        }
        for constraint in state.constraints:
            value = predicted.get(constraint.name)
            if value is not None and not constraint.satisfied_by(value):
                interval = (
                    prediction.latency_interval
                    if constraint.name == "latency_p90_ms"
                    else prediction.memory_interval
                )
                shown = f" (80% interval {interval[0]:.3g} - {interval[1]:.3g})" if interval else ""
                return DECISION_SKIPPED, (
                    f"predicted infeasible: {constraint.name} {value:.3g}{shown} against "
                    f"{constraint}"
                )
        dominating = self._dominated_by(state, estimate, prediction)
        if dominating is not None:
            return DECISION_SKIPPED, f"not promising: the measured {dominating} is at least as good"
        if budget_left <= 1:
            return DECISION_SKIPPED, "budget: kept for the final check of the best predicted trials"
        return DECISION_MEASURED, "predicted feasible and promising"

    def _measured_rows(self, device: str) -> list[ResultRow]:
        return measured_rows(self.sstore, self.search_id, device)

    def _feasible(self, state: DeviceState, row: ResultRow) -> bool:
        return all(c.check(row) is None for c in state.constraints)

    def _dominated_by(
        self, state: DeviceState, estimate: ResultRow, prediction: Prediction
    ) -> str | None:
        """A measured feasible row at least as accurate and faster than the trial's predicted
        p90 (so measuring it would not be expected to improve the device's front)."""
        predicted = prediction.latency_p90_ms
        if predicted is None:
            return None
        for row in self._measured_rows(state.device):
            if not row.ok or not self._feasible(state, row):
                continue
            p90 = figure_value(row, "latency_p90_ms")
            if p90 is not None and p90 <= predicted and row.metric_value >= estimate.metric_value:
                return row.candidate
        return None

    def _goodness(self, row: ResultRow) -> float:
        """Smaller is better, as the objective orders rows."""
        return self.objective.oriented(row, self.objective.spec.primary)

    def _violations(self, state: DeviceState, row: ResultRow) -> list[float]:
        out = []
        for constraint in state.constraints:
            violation = constraint.check(row)
            out.append(0.0 if violation is None else min(violation.normalized, 1e6))
        return out

    # -- measuring -----------------------------------------------------------------------------
    def _measure(
        self, state: DeviceState, plan: Plan, built: Built, trial: int
    ) -> tuple[ResultRow | None, str, str]:
        """Measure the trial's variant once for the whole search: (row, decision, reason)."""
        device = state.device
        while True:
            what = Variant(plan.label, plan.recipe.name, built.format, built.precision)
            claim = self.sstore.claim(
                self.search_id, device, plan.variant, self.worker, trial, self.spec.lease_s, what
            )
            if claim.mine:
                break
            existing = claim.existing
            reused = measured_pairs(self.sstore, [existing]) if existing is not None else []
            if existing is not None and reused:
                return (
                    reused[0][1],
                    DECISION_REUSED,
                    (f"measured for trial {existing.trial_number} already; its result is reused"),
                )
            if existing is not None and existing.state == MEASURED:
                return None, DECISION_FAILED, "its stored result cannot be read"
            if existing is not None and existing.state not in OPEN_MEASUREMENT_STATES:
                return None, DECISION_FAILED, f"its measurement failed: {existing.error}"
            time.sleep(0.5)  # another worker is measuring it: wait for its result
        renew_stop = threading.Event()

        def renew() -> None:
            while not renew_stop.wait(self.spec.lease_s / 3):
                self.sstore.renew(
                    self.search_id, device, plan.variant, self.worker, self.spec.lease_s
                )

        renewer = threading.Thread(target=renew, daemon=True)
        renewer.start()
        try:
            result = self.meter.measure(
                built.path, device, plan.threads, plan.runtime, adopt=claim.adopt,
                on_sent=lambda job_id: self.sstore.measurement_sent(self.search_id, device, plan.variant, self.worker, job_id),
            )  # fmt: skip
            judgement, row = self._judge(result, plan, built, device)
        except (MeasureError, QualityError, ConfigError) as exc:  # QualityError: not comparable
            error = str(exc)[:1000]
            self.sstore.measurement_done(
                self.search_id, device, plan.variant, self.worker, judgement=None, error=error
            )
            return None, DECISION_FAILED, f"not measured or not judged: {error}"
        finally:
            renew_stop.set()
        self.sstore.measurement_done(
            self.search_id, device, plan.variant, self.worker,
            judgement=msgspec.json.encode(judgement).decode("utf-8"),
        )  # fmt: skip
        self.refit()
        adopted = " (the answer to the job a stopped worker sent)" if claim.adopt else ""
        return row, DECISION_MEASURED, f"measured{adopted}"

    def _judge(
        self, result: BenchmarkResult, plan: Plan, built: Built, device: str
    ) -> tuple[Judgement, ResultRow]:
        """How the host judges a measured variant's result against the baseline
        (host.campaign.quality, the campaign's rules), and the selection's row of it."""
        from host.campaign.quality import judge_result, result_row
        from host.store.campaigns import CandidateInfo

        cand = CandidateInfo(
            campaign_id=self.search_id, candidate_id=plan.label, position=0,
            recipe_name=plan.recipe.name, recipe=plan.recipe.to_list(), format=built.format,
            precision=built.precision, status="ok", reason=None, sha256=built.sha256,
            path=built.path, size_bytes=built.size_bytes, host_metrics={}, created=time.time(),
        )  # fmt: skip
        judgement = judge_result(result, cand, device, self.prepared, self.fleet)
        return judgement, result_row(
            result, judgement, candidate=plan.label, artifact=plan.label, device=device,
            recipe=plan.recipe.name, format=built.format, precision=built.precision,
        )  # fmt: skip

    # -- the end -------------------------------------------------------------------------------
    def _final_checks(self, state: DeviceState) -> None:
        """Boards last: while budget is left, measure the skipped trials predicted to beat the
        device's current (measured) choice, best first; with no choice yet, the best predicted
        one whatever it is, so that the device ends with a measured result to choose from."""
        for _goodness, feasible, plan, built in self._skipped(state):
            if self.used(state.device) >= self.spec.budget:
                break
            current = self.selection_for(state).candidate
            if current is not None:
                prediction = self._predict(built, plan, state)
                estimate = self._estimate_row(built, plan, state.device, prediction)
                if not feasible or self._goodness(estimate) >= self._goodness(current):
                    continue
            elif self._measured_rows(state.device) and not feasible:
                continue
            _row, decision, reason = self._measure(state, plan, built, -1)
            self.progress(
                "trial",
                {"device": state.device, "trial": None, "decision": decision,
                 "reason": f"final check of {plan.describe()}: {reason}",
                 "used": self.used(state.device), "budget": self.spec.budget},
            )  # fmt: skip

    def _skipped(self, state: DeviceState) -> list[tuple[float, bool, Plan, Built]]:
        """The device's trials that were judged on predictions and not measured -- whichever
        worker or run decided them, read from the database -- best predicted first:
        (goodness, predicted feasible, plan, built)."""
        from host.compress import Recipe

        measured = {m.variant for m in self.sstore.measurements(self.search_id, state.device)}
        out: dict[str, tuple[float, bool, Plan, Built]] = {}
        for trial in self.sstore.trials(self.search_id, state.device):
            if trial.decision != DECISION_SKIPPED or not trial.host or not trial.variant:
                continue
            if trial.variant in measured or trial.variant in out:
                continue
            try:
                built = Built.from_dict(trial.host)
                plan = Plan(
                    Recipe.from_obj(trial.recipe, name=str(trial.host.get("recipe_name", ""))),
                    str(trial.params.get("runtime") or built.format),
                    trial.params.get("threads"),
                    dict(trial.params),
                )
            except (ConfigError, TypeError, KeyError) as exc:
                logger.info("trial %d cannot be checked again: %s", trial.trial_number, exc)
                continue
            if plan.variant != trial.variant or not Path(built.path).is_file():
                continue
            prediction = self._predict(built, plan, state)
            if not prediction.known:
                continue
            estimate = self._estimate_row(built, plan, state.device, prediction)
            feasible = not any(v > 0 for v in self._violations(state, estimate))
            out[trial.variant] = (self._goodness(estimate), feasible, plan, built)
        return sorted(out.values(), key=lambda p: p[0])

    def selection_for(self, state: DeviceState) -> Any:
        rows = self._measured_rows(state.device)
        return select(
            rows, state.constraints, self.objective, devices=[state.device], strict=self.spec.strict
        )[state.device]

    def selection(self) -> dict[str, Any]:
        rows = [r for d in self.spec.devices for r in self._measured_rows(d)]
        return select(
            rows,
            list(self.spec.constraints),
            self.objective,
            devices=self.spec.devices,
            strict=self.spec.strict,
        )


def run_search(
    spec: SearchSpec,
    store: Store,
    fleet: Fleet,
    *,
    search_id: str,
    work_dir: Path,
    progress: SearchProgress | None = None,
    worker: str | None = None,
    predictor_exclude: set[str] | None = None,
) -> dict[str, Any]:
    """Run, resume or join a search; returns the document ``edgetailor search --json`` prints."""
    return SearchLoop(
        spec, store, fleet, search_id, work_dir, progress=progress, worker=worker,
        predictor_exclude=predictor_exclude,
    ).run()  # fmt: skip


__all__ = ["SearchLoop", "run_search"]
