"""The search's state in the host's database, on SQLite and PostgreSQL: the Optuna study resumes
from its RDB storage, a dead worker's trial is asked again, and a measurement is claimed by exactly
one of several workers (a dead worker's claim is taken over by one survivor, with its job)."""

from __future__ import annotations

import threading
import time

import optuna
import pytest

from host.search.store import MEASURED, SearchStore
from host.search.study import DeviceStudy, make_storage
from host.store import Store


def _ask_tell(study: DeviceStudy, value: float) -> int:
    trial = study.ask()
    trial.suggest_float("prune", 0.0, 0.7, step=0.05)
    trial.suggest_categorical("precision", ["fp32", "int8"])
    study.tell(trial, 0.9 - value, 1.0 + value, [0.0])
    return trial.number


def test_a_study_resumes_from_the_database_with_every_trial_it_had(db_url: str) -> None:
    Store(db_url).close()  # the host's tables first, as a search does
    first = DeviceStudy(make_storage(db_url), "s1", "pi-01", "tpe", 0, 10)
    numbers = [_ask_tell(first, i / 10) for i in range(3)]
    # A new process: a fresh storage object on the same URL.
    again = DeviceStudy(make_storage(db_url), "s1", "pi-01", "tpe", 0, 10)
    assert again.finished() == 3
    assert [t.number for t in again.study.get_trials()] == numbers
    assert _ask_tell(again, 0.5) == 3
    other = DeviceStudy(make_storage(db_url), "s1", "pi-02", "tpe", 0, 10)
    assert other.finished() == 0  # one study per device


def test_a_trial_whose_worker_stopped_beating_is_failed_and_asked_again(db_url: str) -> None:
    Store(db_url).close()
    storage = make_storage(db_url, heartbeat_s=1, grace_s=2)
    dead = DeviceStudy(storage, "s2", "pi-01", "tpe", 0, 10)
    trial = dead.ask()
    params = {"prune": trial.suggest_float("prune", 0.0, 0.7, step=0.05)}
    storage.record_heartbeat(trial._trial_id)  # it beat once, then its worker died
    time.sleep(3)
    survivor = DeviceStudy(
        make_storage(db_url, heartbeat_s=1, grace_s=2), "s2", "pi-01", "tpe", 0, 10
    )
    retry = survivor.ask()
    assert retry.suggest_float("prune", 0.0, 0.7, step=0.05) == params["prune"]
    states = {t.number: t.state for t in survivor.study.get_trials()}
    assert states[trial.number] == optuna.trial.TrialState.FAIL
    assert survivor.finished() == 0  # a stale trial does not count as done


def test_one_of_several_workers_claims_a_measurement(db_url: str) -> None:
    store = Store(db_url)
    sstore = SearchStore(store)
    sstore.create_search("s3", {"x": 1})
    results = []
    barrier = threading.Barrier(4)

    def worker(name: str) -> None:
        barrier.wait()
        results.append((name, sstore.claim("s3", "pi-01", "v1", name, 1, lease_s=60)))

    threads = [threading.Thread(target=worker, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [name for name, claim in results if claim.mine]
    assert len(winners) == 1
    assert all(
        c.existing is not None and c.existing.worker == winners[0] for _, c in results if not c.mine
    )
    sstore.measurement_done("s3", "pi-01", "v1", winners[0], judgement="{}")
    later = sstore.claim("s3", "pi-01", "v1", "w9", 2, lease_s=60)
    assert not later.mine and later.existing.state == MEASURED
    store.close()


def test_a_dead_workers_claim_is_taken_over_once_with_the_job_it_sent(db_url: str) -> None:
    store = Store(db_url)
    sstore = SearchStore(store)
    sstore.create_search("s4", {"x": 1})
    assert sstore.claim("s4", "pi-01", "v1", "dead", 1, lease_s=0.5).mine
    sstore.measurement_sent("s4", "pi-01", "v1", "dead", "job-123")
    assert not sstore.claim("s4", "pi-01", "v1", "early", 2, lease_s=60).mine  # still leased
    time.sleep(0.7)
    claims = [sstore.claim("s4", "pi-01", "v1", f"s{i}", 3, lease_s=60) for i in range(3)]
    taken = [c for c in claims if c.mine]
    assert len(taken) == 1 and taken[0].adopt == "job-123"
    store.close()


@pytest.mark.parametrize("budget", [0, -1])
def test_a_search_spec_refuses_an_impossible_budget(budget: int) -> None:
    from host.search.spec import SearchSpec
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match="budget"):
        SearchSpec(model="builtin:mlp", data="builtin:digits", devices=("pi-01",), budget=budget)
