"""Fixtures shared by every test package: real Mosquitto brokers, unique base topics, and both
stores (SQLite and the machine's PostgreSQL)."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from tests.brokers import MosquittoProcess, free_port, wait_for_port

# The machine's PostgreSQL (trust auth, database ``test``); .ci/run starts one where none runs.
POSTGRES_URL = os.environ.get(
    "EDGETAILOR_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)

SHARED_BROKER = ("127.0.0.1", 1883)


@pytest.fixture(scope="session", autouse=True)
def edgetailor_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A home of the test session's own: the host key made on first use, outputs and the
    default database never land in the user's ~/.edgetailor (or another session's)."""
    home = tmp_path_factory.mktemp("edgetailor-home")
    previous = os.environ.get("EDGETAILOR_HOME")
    os.environ["EDGETAILOR_HOME"] = str(home)
    yield home
    if previous is None:
        os.environ.pop("EDGETAILOR_HOME", None)
    else:
        os.environ["EDGETAILOR_HOME"] = previous


@pytest.fixture
def base_topic() -> str:
    """A base topic no other test (or earlier run) uses: retained messages outlive a run."""
    return f"ettest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def shared_broker_url() -> str:
    """The machine's Mosquitto on 127.0.0.1:1883 (started by the machine and by .ci/run)."""
    host, port = SHARED_BROKER
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        pytest.fail(f"no MQTT broker on {host}:{port}: start one with `mosquitto -d`")
    return f"mqtt://{host}:{port}"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto of the test's own on a free port, which the test may kill and restart."""
    broker = MosquittoProcess(tmp_path / "mosquitto", port=free_port())
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL schema of the test's own, dropped afterwards: tests share the database
    ``test``, and a schema per test (first on the search path) keeps their tables, Alembic's and
    Optuna's version tables included, apart. Its connections carry the schema as application
    name, so that the ones a test leaves open are closed before the drop, which they would block."""
    schema = f"et_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
    except Exception as exc:  # noqa: BLE001 - the message names what is missing
        admin.dispose()
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not usable: {exc}")
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}&application_name={schema}"
    finally:
        with admin.connect() as conn:
            conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                     "WHERE application_name = :schema AND pid <> pg_backend_pid()"),
                {"schema": schema},
            )  # fmt: skip
            conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        admin.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Each store in turn: a fresh SQLite file, then a fresh PostgreSQL schema. A test that takes
    this fixture runs on both, so what works on one is shown to work on the other."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'edgetailor.db'}"
        return
    yield request.getfixturevalue("pg_url")


__all__ = ["MosquittoProcess", "free_port", "os", "wait_for_port"]
