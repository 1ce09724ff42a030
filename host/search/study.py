"""One Optuna study per (search, device), through ask/tell, stored in the host's own database.

Optuna's ``RDBStorage`` on the host's URL (SQLite or PostgreSQL) keeps every trial, so a search
resumes after a restart and several workers (``serve`` replicas, or two ``search`` processes) share
one study: Optuna numbers trials in the database, and a worker's ``ask`` sees what the others told.

A worker that dies leaves its trial RUNNING. Each worker beats a heartbeat for the trial it works
on; a trial whose heartbeat is older than the grace period is failed by the next worker that asks
(``fail_stale_trials``) and its parameters are asked again (``RetryHeartbeatStaleTrialCallback``):
the measurement it may have made is in the search's own claim rows, so the retry reuses it.

Objectives: the metric (maximized) and the p90 latency on the device (minimized); a trial's
constraint violations (``<= 0`` means met) steer the sampler away from infeasible regions.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from host.errors import ConfigError

if TYPE_CHECKING:
    import optuna

logger = logging.getLogger(__name__)

CONSTRAINTS_ATTR = "constraints"
HEARTBEAT_S = 10
GRACE_S = 40


def study_name(search_id: str, device: str) -> str:
    return f"edgetailor:{search_id}:{device}"


def _quiet() -> None:
    """Optuna warns that heartbeats are meant for ``optimize`` (ask/tell beats them here) and that
    grouped multivariate TPE is experimental; neither is news to a user of ``search``."""
    import optuna

    warnings.filterwarnings("ignore", message="Heartbeat of storage", category=UserWarning)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def _constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
    return list(trial.user_attrs.get(CONSTRAINTS_ATTR, [0.0]))


def make_storage(url: str, *, heartbeat_s: int = HEARTBEAT_S, grace_s: int = GRACE_S) -> Any:
    """Optuna's RDB storage on the host's database URL (its tables beside the host's)."""
    import optuna
    from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _quiet()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("sqlite"):
        kwargs["connect_args"] = {"timeout": 30}
    # Two workers starting on a fresh database both create Optuna's tables (and PostgreSQL enum
    # types); the loser's "already exists" means they exist now, so looking again settles it.
    for attempt in range(5):
        try:
            return RDBStorage(
                url,
                engine_kwargs=kwargs,
                heartbeat_interval=heartbeat_s,
                grace_period=grace_s,
                heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=2),
            )
        except Exception as exc:
            text = str(exc).lower()
            if attempt < 4 and ("already exists" in text or "duplicate" in text):
                logger.debug("Optuna's tables created concurrently (attempt %d)", attempt)
                time.sleep(0.2 * (attempt + 1))
                continue
            raise ConfigError(
                f"Optuna cannot use the database {url.split('@')[-1]}: {exc}"
            ) from exc
    raise ConfigError(f"Optuna cannot create its tables in {url.split('@')[-1]}")


class DeviceStudy:
    """The study of one device: ask a trial, keep its heartbeat, tell what it came to."""

    def __init__(
        self, storage: Any, search_id: str, device: str, sampler: str, seed: int, trials: int
    ) -> None:
        import optuna

        if sampler == "nsga2":
            chosen: Any = optuna.samplers.NSGAIISampler(
                seed=seed,
                constraints_func=_constraints,
                population_size=max(4, min(10, trials // 2)),
            )
        else:
            chosen = optuna.samplers.TPESampler(
                seed=seed,
                constraints_func=_constraints,
                n_startup_trials=max(4, min(10, trials // 3)),
                multivariate=True,
                group=True,
            )
        self.storage = storage
        self.name = study_name(search_id, device)
        self.study = optuna.create_study(
            study_name=self.name,
            storage=storage,
            sampler=chosen,
            directions=["maximize", "minimize"],
            load_if_exists=True,
        )

    def warm_start(self, policies: list[dict[str, Any]]) -> None:
        """Ask these parameters first in a study that has no trial yet (the uniform policies a
        named recipe would apply), so the search starts from what the menu offers."""
        if self.study.get_trials(deepcopy=False):
            return
        for params in policies:
            self.study.enqueue_trial(params, skip_if_exists=True)

    def recover(self) -> None:
        """Fail the trials of workers that stopped beating (their parameters are asked again)."""
        from optuna.storages import fail_stale_trials

        fail_stale_trials(self.study)

    def ask(self) -> optuna.trial.Trial:
        self.recover()
        return self.study.ask()

    @contextmanager
    def heartbeat(self, trial: optuna.trial.Trial) -> Iterator[None]:
        """Beat the trial's heartbeat until the block ends."""
        stop = threading.Event()
        trial_id = trial._trial_id

        def beat() -> None:
            while not stop.is_set():
                try:
                    self.storage.record_heartbeat(trial_id)
                except Exception:
                    logger.debug("heartbeat of trial %s failed", trial.number, exc_info=True)
                stop.wait(self.storage.heartbeat_interval or HEARTBEAT_S)

        thread = threading.Thread(target=beat, name=f"heartbeat-{trial.number}", daemon=True)
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join(timeout=5)

    def tell(
        self, trial: optuna.trial.Trial, metric: float, latency_ms: float, violations: list[float]
    ) -> None:
        trial.set_user_attr(CONSTRAINTS_ATTR, [float(v) for v in violations] or [0.0])
        self.study.tell(trial, [float(metric), float(latency_ms)])

    def fail(self, trial: optuna.trial.Trial, reason: str) -> None:
        import optuna

        trial.set_user_attr("reason", reason[:500])
        self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def finished(self) -> int:
        """Trials that came to an end, whichever worker ran them: complete, or failed by a worker
        (a trial failed for a stale heartbeat is asked again, so it does not count)."""
        import optuna

        trials = self.study.get_trials(deepcopy=False)
        return sum(
            1
            for t in trials
            if t.state == optuna.trial.TrialState.COMPLETE
            or (t.state == optuna.trial.TrialState.FAIL and "reason" in t.user_attrs)
        )


__all__ = ["DeviceStudy", "make_storage", "study_name"]
