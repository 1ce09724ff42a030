"""Acceptance of `edgetailor search` with real agents on the machine's Mosquitto: a board of an
unknown class is measured fully; a choice never rests on a prediction alone; a search killed
mid-way resumes from the database without measuring a variant again; two workers on one study
never measure the same trial twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from host.commands.models import ANSWERED
from host.commands.repository import CommandStore
from host.fleet import Fleet
from host.search import SearchSpec, run_search
from host.search.store import (
    DECISION_MEASURED,
    DECISION_REUSED,
    DECISION_SKIPPED,
    MEASURED,
    SearchStore,
)
from host.store import Store
from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult
from tests.agents import AgentProcess
from tests.e2e.conftest import cli_env

pytestmark = pytest.mark.slow

DEVICE = "search-board"
SMALL = dict(
    model="builtin:digits_cnn?width=0.5", data="builtin:digits", devices=(DEVICE,),
    pretrain_epochs=4, recovery_epochs=1, runs=10, min_s=0.1, lowrank=False, eval_samples=270,
    constraints=("accuracy_drop<=0.05",), objective="min_latency", job_timeout_s=120,
)  # fmt: skip


@pytest.fixture(scope="module")
def board(
    tmp_path_factory: pytest.TempPathFactory, shared_broker_url: str
) -> Iterator[tuple[str, str]]:
    """One real agent (two threads) on the machine's broker, under a base topic of its own."""
    import uuid

    base = f"etsearch-{uuid.uuid4().hex[:10]}"
    root = tmp_path_factory.mktemp("search-agent")
    agent = AgentProcess(shared_broker_url, DEVICE, root / "agent", base, ["--threads", "2"])
    agent.start()
    agent.wait_online(timeout=60)
    yield shared_broker_url, base
    agent.terminate()


@pytest.fixture(scope="module")
def fleet_db(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One database for the module's first two tests: the second learns from the first."""
    return f"sqlite:///{tmp_path_factory.mktemp('search-db') / 'host.db'}"


def _search(
    db: str, broker: str, base: str, search_id: str, work: Path, **spec: Any
) -> dict[str, Any]:
    with Store(db) as store, Fleet(broker, base, store=store) as fleet:
        fleet.wait_synced()
        return run_search(
            SearchSpec(**{**SMALL, **spec}), store, fleet, search_id=search_id, work_dir=work
        )


def _benchmark_jobs(store: Store) -> Counter[tuple[str | None, Any]]:
    """How many benchmark commands went to the board per (file, threads)."""
    commands = CommandStore(store).list(device_id=DEVICE, kinds=("benchmark",))
    return Counter(
        (command.model_sha256, cast(BenchmarkCmd, command.body()).threads) for command in commands
    )


def test_a_board_of_an_unknown_class_is_measured_fully(
    board: tuple[str, str], fleet_db: str, tmp_path: Path
) -> None:
    broker, base = board
    outcome = _search(fleet_db, broker, base, "unknown-class", tmp_path, trials=8, budget=8,
                      threads=(1, 2), max_prune=0.5)  # fmt: skip
    doc = outcome["devices"][DEVICE]
    trials = doc["trials"]
    assert len(trials) >= 8
    for trial in trials:
        assert trial["prediction"]["known"] is False
        assert trial["decision"] != DECISION_SKIPPED, trial["reason"]
    measured = [t for t in trials if t["decision"] == DECISION_MEASURED]
    assert measured and all("unknown" in t["reason"] for t in measured)
    assert doc["board_measurements"] == len(
        {t["variant"] for t in trials if t["decision"] in (DECISION_MEASURED, DECISION_REUSED)}
    )
    assert doc["selection"]["chosen"] in {row["candidate"] for row in doc["measured"]}


def test_a_choice_never_rests_on_a_prediction_alone(
    board: tuple[str, str], fleet_db: str, tmp_path: Path
) -> None:
    broker, base = board
    # The board's class is known now (the previous test stored its results): most trials are
    # judged on predictions, and the budget leaves room for few measurements.
    outcome = _search(fleet_db, broker, base, "known-class", tmp_path, trials=8, budget=2,
                      threads=(1, 2), max_prune=0.5, seed=1)  # fmt: skip
    doc = outcome["devices"][DEVICE]
    assert any(t["prediction"]["known"] for t in doc["trials"])
    skipped = [t for t in doc["trials"] if t["decision"] == DECISION_SKIPPED]
    assert skipped, (
        "with a known class and a budget of 2, some trials must be judged on predictions"
    )
    chosen = doc["selection"]["chosen"]
    assert chosen is not None
    with Store(fleet_db) as store:
        sstore = SearchStore(store)
        rows = {m.candidate: m for m in sstore.measurements("known-class", DEVICE)}
        assert chosen in rows and rows[chosen].state == MEASURED
        assert rows[chosen].judgement  # the host's judgement; the result is the command's
        stored = CommandStore(store).get(rows[chosen].fleet_job_id)
        assert stored is not None and stored.state == ANSWERED  # the board's own answer
        result = stored.result_as(BenchmarkResult)
        assert result is not None
        assert result.latency_ms.p90 == doc["selection"]["candidate"]["latency_ms"]["p90"]
    assert doc["board_measurements"] <= 2


TINY = dict(precisions=("fp32", "int8", "fp16"), threads=(1,), max_prune=0.0, lease_s=3.0)


def _worker(
    tmp_path: Path, name: str, db: str, board: tuple[str, str], search_id: str, **spec: Any
) -> tuple[subprocess.Popen[bytes], Path]:
    config = {
        "db": db, "broker": board[0], "base": board[1], "search_id": search_id,
        "work_dir": str(tmp_path / "work"), "worker": name,
        "spec": SearchSpec(**{**SMALL, **spec}).to_dict(),
    }  # fmt: skip
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    log = tmp_path / f"{name}.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "tests.e2e.search_worker", str(path)],
            stdout=out, stderr=subprocess.STDOUT, env=cli_env(),
        )  # fmt: skip
    return proc, log


def _wait(proc: subprocess.Popen[bytes], log: Path, timeout: float = 400) -> None:
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert code == 0, log.read_text()[-4000:]


def test_a_search_killed_mid_way_resumes_without_measuring_a_variant_again(
    board: tuple[str, str], tmp_path: Path
) -> None:
    db = f"sqlite:///{tmp_path / 'host.db'}"
    proc, log = _worker(tmp_path, "first", db, board, "killed", trials=6, budget=3, **TINY)
    deadline = time.monotonic() + 300
    with Store(db) as store:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"the worker ended before it could be killed:\n{log.read_text()[-3000:]}"
                )
            done = (
                [m for m in SearchStore(store).measurements("killed")]
                if "searches" in store.table_names()
                else []
            )
            if any(m.state == MEASURED for m in done):
                break
            time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        before = {
            m.variant: m.fleet_job_id
            for m in SearchStore(store).measurements("killed")
            if m.state == MEASURED
        }
        assert before
    again, log2 = _worker(tmp_path, "second", db, board, "killed", trials=6, budget=3, **TINY)
    _wait(again, log2)
    with Store(db) as store:
        sstore = SearchStore(store)
        after = {m.variant: m for m in sstore.measurements("killed")}
        for variant, job_id in before.items():
            assert after[variant].fleet_job_id == job_id  # kept, not measured again
        jobs = _benchmark_jobs(store)
        assert jobs and max(jobs.values()) == 1, jobs
        assert len(jobs) == len(after) <= 3
        assert all(m.state == MEASURED for m in after.values())
        decisions = [t.decision for t in sstore.trials("killed")]
        assert DECISION_REUSED in decisions  # the resumed run asked measured variants again


def test_two_workers_on_one_study_never_measure_the_same_trial_twice(
    board: tuple[str, str], pg_url: str, tmp_path: Path
) -> None:
    one_variant = dict(precisions=("int8",), threads=(1,), max_prune=0.0, lease_s=30.0)
    Store(pg_url).close()
    a, log_a = _worker(tmp_path, "a", pg_url, board, "shared", trials=4, budget=4, **one_variant)
    b, log_b = _worker(tmp_path, "b", pg_url, board, "shared", trials=4, budget=4, **one_variant)
    _wait(a, log_a)
    _wait(b, log_b)
    with Store(pg_url) as store:
        sstore = SearchStore(store)
        trials = sstore.trials("shared")
        assert {t.worker for t in trials} == {"a", "b"}, [(t.worker, t.decision) for t in trials]
        assert len({t.variant for t in trials}) == 1
        assert [t.decision for t in trials].count(DECISION_MEASURED) == 1
        assert len(sstore.measurements("shared")) == 1
        assert list(_benchmark_jobs(store).values()) == [1]
