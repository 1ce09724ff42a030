"""Tables of the command pipeline: one row per command, each device's sequence, the store's own id.

Sequences and counters are 64-bit (BigInteger) on every store; the command body and the typed
result are kept as msgspec JSON, exactly the structs that went to the device and came back.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from host.store.models import Base

# Command states. Open: the command still wants an answer (and may be published again).
PENDING = "pending"  # recorded, not published yet (its device offline, or just created)
PUBLISHED = "published"  # published at least once; no sign of life from the device yet
RUNNING = "running"  # the device reported progress (accepted, fetching, running, ...)
# Final.
ANSWERED = "answered"  # a final "ok" response is stored
FAILED = "failed"  # a final "error" response is stored, or the device refused the command
CANCELLED = "cancelled"  # cancelled on request (a cancel command went out if it was published)
EXPIRED = "expired"  # still open past its expiry: given up
SENT = "sent"  # published, and a command of its kind is never answered (acks)
OPEN_STATES = (PENDING, PUBLISHED, RUNNING)
FINAL_STATES = (ANSWERED, FAILED, CANCELLED, EXPIRED, SENT)
COMMAND_STATES = (*OPEN_STATES, *FINAL_STATES)


class CommandRow(Base):
    """One command to one device, from the moment it is recorded to its one stored answer."""

    __tablename__ = "commands"
    __table_args__ = (Index("ix_commands_device_state", "device_id", "state"),)

    # The envelope msg_id: "<store id>-<uuid hex>", so a host tells its own commands apart.
    command_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(32))  # benchmark, deploy, rollback, ack, ...
    # The job the body names (a benchmark's job id, a deploy's deploy id), else the command id.
    job_id: Mapped[str] = mapped_column(String(64), index=True)
    body: Mapped[str] = mapped_column(Text)  # the body struct, msgspec JSON
    # The artifacts the body names: the device may fetch them while the command is open.
    model_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    eval_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    parent_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # what a cancel stops
    state: Mapped[str] = mapped_column(String(16), index=True)
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)  # last progress stage
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)  # times published
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    published_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    expires_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    # The one final response stored (unique: a second copy is a duplicate).
    response_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    status: Mapped[str | None] = mapped_column(String(16), nullable=True)  # ok | error
    result: Mapped[str | None] = mapped_column(Text, nullable=True)  # the typed result, JSON
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    finished: Mapped[float | None] = mapped_column(Float, nullable=True)


class SequenceRow(Base):
    """The last sequence number given to a command for a device (shared.signing.ReplayWindow)."""

    __tablename__ = "command_sequences"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)


class StoreIdentityRow(Base):
    """The database's own random id, made once: every command id starts with it."""

    __tablename__ = "store_identity"

    name: Mapped[str] = mapped_column(String(32), primary_key=True)
    value: Mapped[str] = mapped_column(String(64))
    created: Mapped[float] = mapped_column(Float)


__all__ = [
    "ANSWERED",
    "CANCELLED",
    "COMMAND_STATES",
    "EXPIRED",
    "FAILED",
    "FINAL_STATES",
    "OPEN_STATES",
    "PENDING",
    "PUBLISHED",
    "RUNNING",
    "SENT",
    "CommandRow",
    "SequenceRow",
    "StoreIdentityRow",
]
