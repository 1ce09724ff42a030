"""Schema migrations of the host's database (Alembic), run by every ``Store`` it opens.

Opening a store brings its database to the newest revision, under a lock that one process holds at
a time (PostgreSQL: a transaction-scoped advisory lock; SQLite: an exclusive transaction), so hosts
opening one database at once wait for each other and find it done:

- a fresh database (none of the host's tables) gets the tables of the models and is stamped with
  the newest revision: the cookbook's way, and the models and the revisions agree (a test checks);
- any other is upgraded revision by revision. One made before migrations existed has the tables
  and no version: the baseline adopts it (creates what it lacks, keeps every row) and the later
  revisions change it like any other.

Alembic's version lives in ``edgetailor_alembic_version``: Optuna keeps its own ``alembic_version``
in the same database (``edgetailor search``). Tables that are not the host's (Optuna's) are never
compared, changed or dropped.

Make a new revision after changing a model: ``python -m host.store.migrations revision -m MSG``.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import Connection, create_engine, event, inspect, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import NullPool

from host.errors import HostError
from host.store.schema import metadata

logger = logging.getLogger(__name__)

VERSION_TABLE = "edgetailor_alembic_version"
HERE = Path(__file__).resolve().parent
# One advisory lock key for the host's migrations on a PostgreSQL database (a signed 64-bit int).
_PG_LOCK_KEY = zlib.crc32(b"edgetailor.store.migrations")


class MigrationError(HostError):
    """The database's schema cannot be brought to this version's."""


def _include_name(name: str | None, type_: str, _parents: dict[str, str | None]) -> bool:
    """Only the host's own tables are compared: Optuna's share the database."""
    return type_ != "table" or name in metadata().tables


def context_options() -> dict[str, Any]:
    """How Alembic sees the host's database, for env.py and for comparing it with the models."""
    return dict(
        version_table=VERSION_TABLE,
        include_name=_include_name,
        compare_type=True,
        render_as_batch=True,  # SQLite changes a column by copying its table
    )


def alembic_config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


@cache
def scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


def head() -> str:
    revision = scripts().get_current_head()
    if revision is None:  # pragma: no cover - the package ships its revisions
        raise MigrationError(f"no revision in {HERE / 'versions'}")
    return revision


def current_revision(connection: Connection) -> str | None:
    """The revision a database is at (None: fresh, or made before migrations existed)."""
    return MigrationContext.configure(
        connection, opts={"version_table": VERSION_TABLE}
    ).get_current_revision()


def upgrade(engine: Engine) -> None:
    """Bring the database behind ``engine`` to the newest revision (see the module's doc)."""
    with _locked(engine) as connection:
        current = current_revision(connection)
        newest = head()
        if current == newest:
            return
        config = alembic_config(connection)
        host_tables = set(metadata().tables)
        if current is None and not host_tables & set(inspect(connection).get_table_names()):
            metadata().create_all(connection)
            command.stamp(config, newest)
            logger.info("database created at revision %s", newest)
            return
        if current is None:
            logger.warning("database made before migrations: adopting it (its rows are kept)")
        try:
            scripts().get_revision(current)
        except CommandError as exc:
            raise MigrationError(
                f"the database is at revision {current}, which this version of edgetailor does "
                "not know (a newer one made it): upgrade edgetailor, or point --db at another "
                "database"
            ) from exc
        command.upgrade(config, newest)
        logger.info("database upgraded from revision %s to %s", current, newest)


@contextmanager
def _locked(engine: Engine) -> Iterator[Connection]:
    """A connection in a transaction that no other process's migration runs beside; committed
    when the block ends, rolled back when it raises."""
    if engine.dialect.name == "postgresql":
        with engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_LOCK_KEY})
            yield connection
        return
    if engine.dialect.name == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        exclusive = _sqlite_exclusive_engine(engine)
        try:
            with exclusive.begin() as connection:
                yield connection
        finally:
            exclusive.dispose()
        return
    with engine.begin() as connection:  # in-memory SQLite: no other process can open it
        yield connection


def _sqlite_exclusive_engine(engine: Engine) -> Engine:
    """An engine on the same SQLite file whose transactions are real ones, DDL included, each
    started with BEGIN EXCLUSIVE: the file's other writers wait (up to 30 s) until it commits.
    Python's sqlite3 otherwise runs DDL outside any transaction (SQLAlchemy's pysqlite recipe)."""
    exclusive = create_engine(engine.url, poolclass=NullPool, connect_args={"timeout": 30})

    @event.listens_for(exclusive, "connect")
    def _no_implicit_transactions(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None

    @event.listens_for(exclusive, "begin")
    def _begin_exclusive(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN EXCLUSIVE")

    return exclusive


__all__ = [
    "VERSION_TABLE",
    "MigrationError",
    "alembic_config",
    "context_options",
    "current_revision",
    "head",
    "scripts",
    "upgrade",
]
