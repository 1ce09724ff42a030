"""Host replicas on one PostgreSQL database share the results through MQTT shared subscriptions."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from bench.simfleet import SimFleet, write_artifact
from host.commands import CommandInfo, CommandStore
from host.commands.keys import make_key
from host.store import Store

ROOT = Path(__file__).resolve().parents[2]
BOARDS = 50


def _start_replica(
    tmp_path: Path, name: str, broker: str, base: str, db: str, artifact: Path,
    manifest_json: str, devices: list[str],
) -> tuple[subprocess.Popen[bytes], Path]:  # fmt: skip
    ready = tmp_path / f"{name}.ready"
    log = (tmp_path / f"{name}.log").open("wb")
    key = tmp_path / "keys" / "signing.key"  # replicas of one database share the host key
    if not key.exists():
        make_key(key)
    args = [broker, base, db, str(tmp_path / name), "hosts", str(artifact), manifest_json,
            ",".join(devices), str(ready), str(key)]  # fmt: skip
    env = {**os.environ, "EDGETAILOR_HOME": str(tmp_path / name)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.host.replica", *args], cwd=ROOT, stdout=log, stderr=log,
        env=env,
    )  # fmt: skip
    return proc, ready


def _wait(what: str, check: object, timeout: float, procs: list[subprocess.Popen[bytes]]) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        for proc in procs:
            if proc.poll() not in (None, -signal.SIGKILL):
                pytest.fail(f"a replica exited with {proc.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def _results(commands: CommandStore) -> list[CommandInfo]:
    return [c for c in commands.list(kinds=("benchmark",)) if c.response_msg_id is not None]


def test_two_replicas_store_every_result_once_even_when_one_is_sigkilled(
    tmp_path: Path, pg_url: str, shared_broker_url: str, base_topic: str
) -> None:
    store = Store(pg_url)  # creates the tables before the replicas race to
    commands = CommandStore(store)
    # One artifact per replica: a chunk request the broker hands to the other replica is served
    # from the path the database records.
    artifacts = [tmp_path / "a.onnx", tmp_path / "b.onnx"]
    manifests = [
        msgspec.json.encode(write_artifact(path, 20_000, seed=seed)).decode()
        for path, seed in zip(artifacts, (11, 12), strict=True)
    ]
    procs: list[subprocess.Popen[bytes]] = []
    # Boards ask for their artifact 2 s after the command and report 0.9-2.4 s after that: the
    # kill, as soon as the doomed replica has sent its commands, lands before any of its boards
    # fetched, so the survivor must serve the dead replica's artifact and take its results.
    with SimFleet(
        shared_broker_url, base_topic, BOARDS, run_s=1.5, retry_s=1.0, outbox_retry_s=1.0,
        fetch_delay_s=2.0,
    ) as sims:  # fmt: skip
        sims.wait_online(30)
        ids = sims.device_ids
        half = BOARDS // 2
        doomed, doomed_ready = _start_replica(
            tmp_path, "a", shared_broker_url, base_topic, pg_url, artifacts[0], manifests[0],
            ids[:half],
        )  # fmt: skip
        survivor, survivor_ready = _start_replica(
            tmp_path, "b", shared_broker_url, base_topic, pg_url, artifacts[1], manifests[1],
            ids[half:],
        )  # fmt: skip
        procs = [doomed, survivor]
        try:
            _wait("the doomed replica to send its jobs", doomed_ready.exists, 40, procs)
            doomed.send_signal(signal.SIGKILL)
            doomed.wait(10)
            at_kill = _results(commands)
            stored_at_kill = len(at_kill)
            doomed_done_at_kill = sum(r.device_id in ids[:half] for r in at_kill)
            _wait(
                f"all {BOARDS} results (had {stored_at_kill} when a replica was killed)",
                lambda: len(_results(commands)) >= BOARDS, 40, [survivor],
            )  # fmt: skip
            _wait("every result acknowledged", lambda: sims.outbox_sizes() == 0, 10, [survivor])
            time.sleep(1.5)  # a re-sent result arriving now must not be stored twice
            results = _results(commands)
            jobs = commands.list(kinds=("benchmark",))
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.terminate()
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            store.close()
    assert stored_at_kill < BOARDS
    # The killed replica's own jobs were unfinished: the survivor stored them.
    assert doomed_done_at_kill == 0
    assert survivor_ready.exists()
    assert len(jobs) == BOARDS
    assert len(results) == BOARDS
    assert sorted(r.job_id for r in results) == sorted(j.job_id for j in jobs)
    assert {r.device_id for r in results} == set(ids)
    assert all(r.state == "answered" for r in results)
    assert len({r.response_msg_id for r in results}) == BOARDS
    assert sims.stats.hash_failures == 0
