"""The host store: one class over SQLAlchemy that the fleet, campaigns and the CLI share.

``Store(url)`` takes any SQLAlchemy URL; the default is SQLite at
``$EDGETAILOR_HOME/edgetailor.db`` (``~/.edgetailor`` without it; ``EDGETAILOR_DB`` overrides both). PostgreSQL works with ``postgresql+psycopg://user@host/db``.
Every method opens its own short transaction, so a Store may be used from paho's network thread and
the caller's thread at once. Reads return plain dataclasses, never live ORM objects.

Other repositories on the same database (campaigns, deployments, the service's tables) use the
public transaction API: ``with store.transaction() as session`` for a read-write transaction
(serialised with this process's other writers, committed on exit, rolled back on an exception) and
``with store.read() as session`` for reads. Nothing outside this module touches the engine's
sessions or the writer lock directly.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from sqlalchemy import create_engine, event, inspect, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import (
    ArgumentError,
    IntegrityError,
    NoSuchModuleError,
    OperationalError,
)
from sqlalchemy.orm import Session, sessionmaker

from host.errors import ConfigError, HostError
from host.store import migrations
from host.store.models import ArtifactRow, DeviceRow

logger = logging.getLogger(__name__)

DB_FILE_NAME = "edgetailor.db"


class StoreError(HostError):
    """The database cannot be opened or written."""


def default_db_url() -> str:
    """``$EDGETAILOR_DB``, else SQLite in ``$EDGETAILOR_HOME`` (default ~/.edgetailor)."""
    if env := os.environ.get("EDGETAILOR_DB"):
        return env
    from host.security import edgetailor_home

    return f"sqlite:///{edgetailor_home().expanduser() / DB_FILE_NAME}"


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    online: bool
    birth: dict[str, Any] | None
    telemetry: dict[str, Any] | None
    first_seen: float
    last_seen: float
    last_telemetry_at: float | None
    device_key: str | None = None
    device_key_at: float | None = None


def _columns(row: Any, cls: type) -> Any:
    return cls(**{name: getattr(row, name) for name in cls.__dataclass_fields__})


class Store:
    """Devices and artifacts in one SQL database; other host features (commands, campaigns,
    deployments, searches) keep their tables in it through their repositories. Opening it brings
    the database to the newest schema revision (host.store.migrations), every table included."""

    def __init__(self, url: str | None = None, *, echo: bool = False) -> None:
        self.url = url or default_db_url()
        self._lock = threading.Lock()
        try:
            self.engine = self._make_engine(self.url, echo)
            migrations.upgrade(self.engine)
        except (ArgumentError, NoSuchModuleError) as exc:
            raise ConfigError(
                f"invalid database URL {self.url!r}: {exc}; use e.g. sqlite:///path.db or "
                "postgresql+psycopg://user@host:5432/db"
            ) from exc
        except OperationalError as exc:
            raise StoreError(
                f"cannot open the database {self.safe_url()}: {exc.orig}; check that it is "
                "running and the URL, user and password are right"
            ) from exc
        except migrations.MigrationError as exc:
            raise StoreError(f"the database {self.safe_url()} cannot be used: {exc}") from exc
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    def safe_url(self) -> str:
        """The database URL with any password hidden, for messages a user reads."""
        return (
            self.engine.url.render_as_string(hide_password=True) if hasattr(self, "engine") else "?"
        )

    @staticmethod
    def _make_engine(url: str, echo: bool) -> Engine:
        if url.startswith("sqlite"):
            db_path = url.split("///", 1)[1] if "///" in url else ""
            if db_path and db_path != ":memory:":
                Path(db_path).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(
                url, echo=echo, connect_args={"check_same_thread": False, "timeout": 30}
            )

            @event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
                cursor = dbapi_conn.cursor()
                # WAL lets the CLI read while a campaign writes; FKs are off by default in SQLite.
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

            return engine
        return create_engine(url, echo=echo, pool_pre_ping=True)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def table_names(self) -> list[str]:
        return sorted(inspect(self.engine).get_table_names())

    @contextmanager
    def _session(self) -> Iterator[Session]:
        session = self._sessions()
        try:
            yield session
            session.commit()
        except OperationalError as exc:
            session.rollback()
            raise StoreError(f"database {self.safe_url()} failed: {exc.orig}") from exc
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A read-write transaction: one writer of this process at a time (SQLite allows one writer;
        the lock keeps paho's thread and the caller's from failing each other), committed when the
        block ends, rolled back when it raises. A failing database becomes a StoreError."""
        with self._lock, self._session() as session:
            yield session

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A session for reads; it does not wait for this process's writers."""
        with self._session() as session:
            yield session

    def write_retrying(self, write: Callable[[Session], None]) -> None:
        """Run ``write`` in a transaction, once more when another process inserted the same key
        between our read and our insert: the second pass sees the row and updates it."""
        with self._lock:
            self._retry_on_conflict(lambda: self._write_once(write))

    def _write_once(self, write: Callable[[Session], None]) -> None:
        with self._session() as session:
            write(session)

    @staticmethod
    def _retry_on_conflict(write: Callable[[], None]) -> None:
        """Run an insert-or-update once more when another process inserted the same key between
        our read and our insert (two CLI processes registering one artifact): the second pass sees
        the row and updates it."""
        try:
            write()
        except IntegrityError:
            write()

    # -- devices -------------------------------------------------------------------------------
    def upsert_device(
        self,
        device_id: str,
        *,
        online: bool | None = None,
        birth: dict[str, Any] | None = None,
        telemetry: dict[str, Any] | None = None,
        seen: float | None = None,
        device_key: str | None = None,
    ) -> str | None:
        """Record what a device said; with ``device_key``, pin it unless a key is pinned already.
        Returns the pinned device key (None when none is)."""
        now = time.time() if seen is None else seen
        pinned: list[str | None] = [None]

        def write() -> None:
            pinned[0] = self._upsert_device(device_id, online, birth, telemetry, now, device_key)

        with self._lock:
            self._retry_on_conflict(write)
        return pinned[0]

    def _upsert_device(
        self,
        device_id: str,
        online: bool | None,
        birth: dict[str, Any] | None,
        telemetry: dict[str, Any] | None,
        now: float,
        device_key: str | None,
    ) -> str | None:
        with self._session() as session:
            row = session.get(DeviceRow, device_id)
            if row is None:
                row = DeviceRow(device_id=device_id, online=False, first_seen=now, last_seen=now)
                session.add(row)
            if online is not None:
                row.online = online
            if birth is not None:
                row.birth = birth
            if telemetry is not None:
                row.telemetry = telemetry
                row.last_telemetry_at = now
            if device_key is not None and row.device_key is None:
                row.device_key, row.device_key_at = device_key, now
            row.last_seen = max(row.last_seen, now)
            return row.device_key

    def device_key(self, device_id: str) -> str | None:
        """The key pinned for a device (None: none yet, or forgotten)."""
        with self._session() as session:
            return session.scalar(
                select(DeviceRow.device_key).where(DeviceRow.device_id == device_id)
            )

    def forget_device_key(self, device_id: str) -> bool:
        """Unpin a device's key (its data dir was wiped: it made a new one); its next signed
        birth pins the new key. False when the device is unknown."""
        with self._lock, self._session() as session:
            return bool(
                session.execute(
                    update(DeviceRow)
                    .where(DeviceRow.device_id == device_id)
                    .values(device_key=None, device_key_at=None)
                ).rowcount
            )

    def get_device(self, device_id: str) -> DeviceInfo | None:
        with self._session() as session:
            row = session.get(DeviceRow, device_id)
            return None if row is None else _columns(row, DeviceInfo)

    def list_devices(self) -> list[DeviceInfo]:
        with self._session() as session:
            rows = session.scalars(select(DeviceRow).order_by(DeviceRow.device_id))
            return [_columns(row, DeviceInfo) for row in rows]

    # -- artifacts -----------------------------------------------------------------------------
    def add_artifact(self, manifest: dict[str, Any], path: str | None = None) -> None:
        """Record an artifact by its manifest (idempotent; a later path replaces an older one)."""
        with self._lock:
            self._retry_on_conflict(lambda: self._add_artifact(manifest, path))

    def _add_artifact(self, manifest: dict[str, Any], path: str | None) -> None:
        with self._session() as session:
            row = session.get(ArtifactRow, manifest["sha256"])
            if row is None:
                session.add(
                    ArtifactRow(
                        sha256=manifest["sha256"],
                        format=manifest["format"],
                        precision=manifest["precision"],
                        size_bytes=manifest["size_bytes"],
                        name=manifest.get("name", ""),
                        path=path,
                        manifest=manifest,
                        created=time.time(),
                    )
                )
            elif path is not None:
                row.path = path

    def get_artifact(self, sha256: str) -> dict[str, Any] | None:
        """{"manifest": ..., "path": ...} of a recorded artifact, or None."""
        with self._session() as session:
            row = session.get(ArtifactRow, sha256)
            return None if row is None else {"manifest": row.manifest, "path": row.path}
