"""The host store on SQLite and on the machine's PostgreSQL (each test on both: ``db_url``); its
schema revisions are tests/host/test_migrations.py's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from host.commands import CommandStore, NewCommand
from host.errors import ConfigError
from host.store import Store, StoreError
from shared.messages import PingCmd


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as opened:
        yield opened


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
