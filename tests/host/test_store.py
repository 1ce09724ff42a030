"""The host store on SQLite and on the machine's PostgreSQL (trust auth, database ``test``)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from host.commands import CommandStore, NewCommand
from host.errors import ConfigError
from host.store import Store, StoreError
from shared.messages import PingCmd

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


def _command(commands: CommandStore, device: str = "pi-01") -> str:
    [info] = commands.add([NewCommand(device, PingCmd())])
    return info.command_id


def _store_final(commands: CommandStore, command_id: str, msg_id: str, **kw: object) -> bool:
    values: dict[str, object] = dict(
        status="ok", state="answered", result=None, error_code=None, error_message=None
    )
    values.update(kw)
    with commands.store.transaction() as session:
        return commands.store_final(session, command_id, response_msg_id=msg_id, **values)  # type: ignore[arg-type]


def test_store_creates_its_tables_and_the_command_tables_on_first_use(store: Store) -> None:
    assert {"devices", "artifacts"} <= set(store.table_names())
    CommandStore(store)
    assert {"commands", "command_sequences", "store_identity"} <= set(store.table_names())


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


def test_an_answer_is_stored_once_by_command_and_by_response_msg_id(store: Store) -> None:
    commands = CommandStore(store)
    first_id, second_id = _command(commands), _command(commands)
    first = _store_final(commands, first_id, "r1")
    same_msg = _store_final(commands, first_id, "r1")
    same_command_new_envelope = _store_final(commands, first_id, "r9")
    with commands.store.read() as session:
        reused = commands.stored_responses(session, ["r1", "r2"])
    assert (first, same_msg, same_command_new_envelope, reused) == (True, False, False, {"r1"})
    stored = commands.get(first_id)
    assert stored is not None and stored.state == "answered" and stored.response_msg_id == "r1"
    assert stored.finished is not None
    assert commands.get(second_id).state == "pending"  # type: ignore[union-attr]


def test_progress_does_not_overwrite_a_finished_command(store: Store) -> None:
    commands = CommandStore(store)
    command_id = _command(commands)
    with store.transaction() as session:
        commands.note_stages(session, {command_id: "running"})
    _store_final(commands, command_id, "r1", status="error", state="failed",
                 error_code="hash_mismatch", error_message="bad file")  # fmt: skip
    with store.transaction() as session:
        commands.note_stages(session, {command_id: "running"})
    stored = commands.get(command_id)
    assert stored is not None and (stored.state, stored.error_code) == ("failed", "hash_mismatch")
    assert commands.find(command_id) == stored


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
        conn.execute(text("ALTER TABLE devices DROP COLUMN online"))
    engine.dispose()
    with pytest.raises(StoreError, match=r"table devices without the column online"):
        Store(url)
