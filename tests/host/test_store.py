"""The host store on SQLite and on the machine's PostgreSQL (trust auth, database ``test``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from host.errors import ConfigError
from host.store import Store, StoreError

POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "sqlite":
        opened = Store(f"sqlite:///{tmp_path / 'edgetailor.db'}")
        yield opened
        opened.close()
        return
    # A schema of its own: other tests share the database and its tables.
    schema = f"et_{uuid.uuid4().hex[:10]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - the message names what is missing
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    opened = Store(f"{POSTGRES_URL}?options=-csearch_path%3D{schema}")
    try:
        yield opened
    finally:
        opened.close()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def _job(store: Store, job_id: str = "job-1", command: str = "cmd-1") -> None:
    store.create_job(
        job_id=job_id,
        command_msg_id=command,
        device_id="pi-01",
        kind="benchmark",
        model_sha256="a" * 64,
        params={"runs": 5},
    )


def test_store_creates_the_four_tables(store: Store) -> None:
    assert {"devices", "artifacts", "jobs", "results"} <= set(store.table_names())


def test_device_updates_merge_birth_status_and_telemetry(store: Store) -> None:
    store.upsert_device("pi-01", online=True, birth={"arch": "aarch64", "cores": 4}, seen=100.0)
    store.upsert_device("pi-01", telemetry={"cpu_percent": 12.5}, seen=110.0)
    store.upsert_device("pi-01", online=False, seen=105.0)
    device = store.get_device("pi-01")
    assert device is not None
    assert (device.online, device.birth, device.telemetry) == (
        False,
        {"arch": "aarch64", "cores": 4},
        {"cpu_percent": 12.5},
    )
    assert (device.first_seen, device.last_seen, device.last_telemetry_at) == (100.0, 110.0, 110.0)
    assert [d.device_id for d in store.list_devices()] == ["pi-01"]


def test_a_result_is_stored_once_by_msg_id_and_by_job(store: Store) -> None:
    _job(store)
    _job(store, "job-2", "cmd-2")
    first = store.record_result(
        job_id="job-1", response_msg_id="r1", device_id="pi-01", status="ok", data={"load_ms": 3.0}
    )
    same_msg = store.record_result(
        job_id="job-1", response_msg_id="r1", device_id="pi-01", status="ok", data={}
    )
    same_job_new_envelope = store.record_result(
        job_id="job-1", response_msg_id="r9", device_id="pi-01", status="ok", data={}
    )
    msg_id_reused_for_other_job = store.record_result(
        job_id="job-2", response_msg_id="r1", device_id="pi-01", status="ok", data={}
    )
    assert (first, same_msg, same_job_new_envelope, msg_id_reused_for_other_job) == (
        True,
        False,
        False,
        False,
    )
    result = store.get_result("job-1")
    assert result is not None and result.data == {"load_ms": 3.0}
    job = store.get_job("job-1")
    assert job is not None and job.status == "ok" and job.finished is not None
    assert len(store.list_results()) == 1


def test_progress_does_not_overwrite_a_finished_job(store: Store) -> None:
    _job(store)
    store.update_job_status("job-1", "running")
    store.record_result(
        job_id="job-1",
        response_msg_id="r1",
        device_id="pi-01",
        status="error",
        error_code="hash_mismatch",
        error_message="bad file",
    )
    store.update_job_status("job-1", "running")
    job = store.get_job("job-1")
    assert job is not None and (job.status, job.error_code) == ("error", "hash_mismatch")
    assert store.find_job_by_command("cmd-1") == job


def test_artifacts_are_recorded_once_with_their_manifest(store: Store) -> None:
    manifest = {"sha256": "b" * 64, "format": "tflite", "precision": "fp32", "size_bytes": 10}
    store.add_artifact(manifest, "/tmp/one.tflite")
    store.add_artifact(manifest, "/tmp/two.tflite")
    assert store.get_artifact("b" * 64) == {"manifest": manifest, "path": "/tmp/two.tflite"}


def test_a_malformed_database_url_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match="invalid database URL"):
        Store("nosuchdriver://x")


def test_an_unreachable_database_names_the_url_without_the_password() -> None:
    with pytest.raises(StoreError, match=r"cannot open the database .*127\.0\.0\.1:1") as info:
        Store("postgresql+psycopg://user:secret@127.0.0.1:1/test?connect_timeout=2")
    assert "secret" not in str(info.value)


def test_processes_opening_a_fresh_database_at_once_all_succeed(tmp_path: Path) -> None:
    import subprocess
    import sys

    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = f"from host.store import Store; Store({url!r}).close(); print('ok')"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for _ in range(4)
    ]
    outcomes = [proc.communicate(timeout=60) for proc in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [
        err.decode()[-500:] for _, err in outcomes
    ]


def test_a_database_from_an_older_version_gets_the_new_nullable_columns_and_keeps_its_rows(
    tmp_path: Path,
) -> None:
    from host.store.deployments import DeploymentStore

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with Store(url) as store:
        DeploymentStore(store)
    engine = create_engine(url)
    with engine.begin() as conn:  # what the tables looked like before variants existed
        conn.execute(text("ALTER TABLE rollout_targets DROP COLUMN runtime"))
        conn.execute(text("ALTER TABLE rollout_targets DROP COLUMN threads"))
        conn.execute(text("INSERT INTO devices (device_id, online, first_seen, last_seen) "
                          "VALUES ('pi-old', 0, 1.0, 1.0)"))  # fmt: skip
    with Store(url) as store:
        DeploymentStore(store)
        assert [d.device_id for d in store.list_devices()] == ["pi-old"]
    with engine.connect() as conn:
        columns = {row[1] for row in conn.execute(text("PRAGMA table_info(rollout_targets)"))}
    assert {"runtime", "threads"} <= columns
    engine.dispose()


def test_a_missing_column_that_cannot_be_null_is_an_error_naming_it(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'odd.db'}"
    Store(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("ALTER TABLE jobs DROP COLUMN kind"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"table jobs without the column kind"):
        Store(url)
