"""SQLAlchemy tables of the host store: devices and artifacts (commands and their results are
host.commands' tables).

Timestamps are epoch seconds (floats) so that SQLite and PostgreSQL behave the same; documents that
belong to the wire contract (birth, telemetry, manifests, results) are stored as JSON as received.
Other host features add their tables to the same ``Base``, from the modules host.store.schema names;
host.store.migrations brings a database to that schema.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    pass


class DeviceRow(Base):
    __tablename__ = "devices"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    online: Mapped[bool] = mapped_column(Boolean, default=False)
    birth: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    telemetry: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    first_seen: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    last_telemetry_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The device's Ed25519 public key (base64), pinned on its first signed birth: every later
    # message for this device id must be signed by it (``edgetailor devices --forget`` unpins).
    device_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    device_key_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ArtifactRow(Base):
    __tablename__ = "artifacts"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    format: Mapped[str] = mapped_column(String(16))
    precision: Mapped[str] = mapped_column(String(32))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    name: Mapped[str] = mapped_column(String(128), default="")
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest: Mapped[dict[str, Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
