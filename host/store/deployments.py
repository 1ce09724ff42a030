"""Deployment tables and their repository: rollouts (desired state in waves), one target row per
device of a rollout, and each device's deploy sequence.

A rollout is desired state: what each of its devices should run, and in which wave. A target row
holds everything needed to send its command without recomputing anything: the artifact and the
health-check bar; once sent, the id of its deploy command (host.commands, which publishes it and
stores the device's answer) and the deploy sequence its manifest carries. The deployment driver
(host.deploy.driver) moves targets through their states; every move is a conditional update on
the row's current state, so two service processes on one database never both send a target.

Target states::

    waiting -> pending -> sent -> committed | rolled_back | failed | timeout
    waiting|pending -> skipped      (the rollout was aborted, cancelled or rolled back before)
    waiting|pending -> superseded   (a newer rollout wants something else on the device)
    committed -> wave_rolled_back   (its wave failed) | reverted (the rollout was rolled back)

``rolled_back`` is the device's own verdict (the health check failed, nothing switched).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Float, String, Text, func, select, update
from sqlalchemy.orm import Mapped, Session, mapped_column

from host.commands.repository import CommandStore, NewCommand
from host.store.models import Base
from host.store.repository import Store, _columns
from shared.messages import DeployCmd, RollbackCmd

WAITING = "waiting"
PENDING = "pending"
SENT = "sent"
COMMITTED = "committed"
ROLLED_BACK = "rolled_back"  # the device's health check failed; nothing was switched
FAILED = "failed"
TIMEOUT = "timeout"
WAVE_ROLLED_BACK = "wave_rolled_back"
REVERTED = "reverted"
SKIPPED = "skipped"
SUPERSEDED = "superseded"
OPEN_STATES = (WAITING, PENDING, SENT)
FAILED_STATES = (ROLLED_BACK, FAILED, TIMEOUT)
UNDONE_STATES = (WAVE_ROLLED_BACK, REVERTED)
FINAL_STATES = (COMMITTED, *FAILED_STATES, *UNDONE_STATES, SKIPPED, SUPERSEDED)
TARGET_STATES = (*OPEN_STATES, *FINAL_STATES)

# Rollback of a committed target (the wave failed, or the rollout is rolled back on request).
RB_PENDING = "pending"
RB_SENT = "sent"
RB_RESTORED = "restored"
RB_REFUSED = "refused"  # the deploy was no longer active on the device: nothing changed

# Rollout statuses: "active" drives waves; the others only finish what is in flight.
ACTIVE = "active"
DONE = "done"
ABORTED = "aborted"
CANCELLED = "cancelled"
ROLLED_BACK_ROLLOUT = "rolled_back"
ROLLOUT_STATUSES = (ACTIVE, DONE, ABORTED, CANCELLED, ROLLED_BACK_ROLLOUT)


class DeploySequenceRow(Base):
    __tablename__ = "deploy_sequences"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(BigInteger)  # milliseconds since the epoch and up


class RolloutRow(Base):
    __tablename__ = "rollouts"

    rollout_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    # True while anything is left to do: a target to send or answer, a rollback to carry out.
    open: Mapped[bool] = mapped_column(Boolean, default=True, index=True)
    waves: Mapped[list[list[str]]] = mapped_column(JSON)
    current_wave: Mapped[int] = mapped_column(BigInteger, default=1)
    wave_started: Mapped[float] = mapped_column(Float)
    max_failures: Mapped[int] = mapped_column(BigInteger, default=0)
    aborted_wave: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    label: Mapped[str] = mapped_column(String(128), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class RolloutTargetRow(Base):
    __tablename__ = "rollout_targets"

    deploy_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(64), index=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    wave: Mapped[int] = mapped_column(BigInteger)
    label: Mapped[str] = mapped_column(String(128), default="")
    sha256: Mapped[str] = mapped_column(String(64))
    artifact_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    manifest: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    eval_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_budget_ms: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_metric: Mapped[float | None] = mapped_column(Float, nullable=True)
    # How the board should run it (the variant a campaign picked); None: the agent's default.
    runtime: Mapped[str | None] = mapped_column(String(128), nullable=True)
    threads: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    state: Mapped[str] = mapped_column(String(24), index=True)
    sequence: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    command_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its command
    stage: Mapped[str | None] = mapped_column(String(32), nullable=True)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claim_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    sent_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    finished_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    active_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    previous_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    rollback_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    rollback_msg_id: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its command
    rollback_reason: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class RolloutInfo:
    rollout_id: str
    status: str
    open: bool
    waves: list[list[str]]
    current_wave: int
    wave_started: float
    max_failures: int
    aborted_wave: int | None
    settings: dict[str, Any]
    label: str
    reason: str
    created: float
    updated: float


@dataclass(frozen=True)
class TargetInfo:
    deploy_id: str
    rollout_id: str
    device_id: str
    wave: int
    label: str
    sha256: str
    artifact_path: str | None
    manifest: dict[str, Any] | None
    eval_path: str | None
    latency_budget_ms: float | None
    min_metric: float | None
    runtime: str | None
    threads: int | None
    state: str
    sequence: int | None
    command_msg_id: str | None
    stage: str | None
    claimed_by: str | None
    claim_until: float | None
    sent_at: float | None
    finished_at: float | None
    active_sha256: str | None
    previous_sha256: str | None
    error_code: str | None
    detail: str
    health: dict[str, Any] | None
    rollback_state: str | None
    rollback_msg_id: str | None
    rollback_reason: str
    created: float
    updated: float

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


@dataclass(frozen=True)
class NewTarget:
    """A device's part of a rollout as planned: what to send, in which wave."""

    deploy_id: str
    device_id: str
    wave: int
    sha256: str
    artifact_path: str | None
    manifest: dict[str, Any] | None
    eval_path: str | None = None
    latency_budget_ms: float | None = None
    min_metric: float | None = None
    label: str = ""
    runtime: str | None = None
    threads: int | None = None
    # A target that cannot be sent at all (its file is missing) starts final, with the reason.
    failed_detail: str | None = None


class DeploymentStore:
    """Rollouts and targets on top of a :class:`host.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.commands = CommandStore(store)

    # -- sequences ------------------------------------------------------------------------------
    @staticmethod
    def next_sequence_in(session: Session, device_id: str) -> int:
        """A number above every one this device was given, inside the caller's transaction;
        time-based so that a host that lost its database still counts upwards."""
        row = session.get(DeploySequenceRow, device_id)
        current = row.sequence if row is not None else 0
        sequence = max(current + 1, int(time.time() * 1000))
        if row is None:
            session.add(DeploySequenceRow(device_id=device_id, sequence=sequence))
        else:
            row.sequence = sequence
        return sequence

    def next_sequence(self, device_id: str) -> int:
        with self.store.transaction() as session:
            return self.next_sequence_in(session, device_id)

    # -- rollouts -------------------------------------------------------------------------------
    def create_rollout(
        self,
        rollout_id: str,
        waves: list[list[str]],
        targets: Iterable[NewTarget],
        *,
        max_failures: int,
        settings: dict[str, Any],
        label: str = "",
    ) -> RolloutInfo:
        """Store a rollout and its targets in one transaction; the first wave is pending at once.

        Open targets of older rollouts on the same devices are superseded: a device has one
        desired model, the newest asked for.
        """
        now = time.time()
        targets = list(targets)
        devices = [t.device_id for t in targets]
        with self.store.transaction() as session:
            session.execute(
                update(RolloutTargetRow)
                .where(
                    RolloutTargetRow.device_id.in_(devices),
                    RolloutTargetRow.state.in_((WAITING, PENDING)),
                )
                .values(
                    state=SUPERSEDED,
                    detail=f"superseded by rollout {rollout_id}",
                    finished_at=now,
                    updated=now,
                )
            )
            row = RolloutRow(
                rollout_id=rollout_id, status=ACTIVE, open=True, waves=waves, current_wave=1,
                wave_started=now, max_failures=max_failures, aborted_wave=None,
                settings=settings, label=label, reason="", created=now, updated=now,
            )  # fmt: skip
            session.add(row)
            for target in targets:
                failed = target.failed_detail is not None
                session.add(RolloutTargetRow(
                    deploy_id=target.deploy_id, rollout_id=rollout_id, device_id=target.device_id,
                    wave=target.wave, label=target.label, sha256=target.sha256,
                    artifact_path=target.artifact_path, manifest=target.manifest,
                    eval_path=target.eval_path, latency_budget_ms=target.latency_budget_ms,
                    min_metric=target.min_metric, runtime=target.runtime, threads=target.threads,
                    state=FAILED if failed else (PENDING if target.wave == 1 else WAITING),
                    error_code="not_sent" if failed else None, detail=target.failed_detail or "",
                    finished_at=now if failed else None, rollback_reason="",
                    created=now, updated=now,
                ))  # fmt: skip
            session.flush()
            return _columns(row, RolloutInfo)

    def get_rollout(self, rollout_id: str) -> RolloutInfo | None:
        with self.store.read() as session:
            row = session.get(RolloutRow, rollout_id)
            return None if row is None else _columns(row, RolloutInfo)

    def list_rollouts(
        self, *, open_only: bool = False, limit: int | None = None
    ) -> list[RolloutInfo]:
        with self.store.read() as session:
            query = select(RolloutRow).order_by(RolloutRow.created.desc())
            if open_only:
                query = query.where(RolloutRow.open.is_(True))
            if limit is not None:
                query = query.limit(limit)
            return [_columns(row, RolloutInfo) for row in session.scalars(query)]

    def update_rollout(
        self, rollout_id: str, *, expect_status: str | None = None, **changes: Any
    ) -> bool:
        """Change a rollout; with ``expect_status`` only if it still has that status (a claim)."""
        with self.store.transaction() as session:
            query = update(RolloutRow).where(RolloutRow.rollout_id == rollout_id)
            if expect_status is not None:
                query = query.where(RolloutRow.status == expect_status)
            result = session.execute(query.values(updated=time.time(), **changes))
            return bool(result.rowcount)

    def advance_wave(self, rollout_id: str, from_wave: int) -> bool:
        """Start wave ``from_wave + 1``: exactly one process wins, the others see rowcount 0."""
        now = time.time()
        with self.store.transaction() as session:
            moved = session.execute(
                update(RolloutRow)
                .where(
                    RolloutRow.rollout_id == rollout_id,
                    RolloutRow.status == ACTIVE,
                    RolloutRow.current_wave == from_wave,
                )
                .values(current_wave=from_wave + 1, wave_started=now, updated=now)
            ).rowcount
            if moved:
                session.execute(
                    update(RolloutTargetRow)
                    .where(
                        RolloutTargetRow.rollout_id == rollout_id,
                        RolloutTargetRow.wave == from_wave + 1,
                        RolloutTargetRow.state == WAITING,
                    )
                    .values(state=PENDING, updated=now)
                )
            return bool(moved)

    # -- targets --------------------------------------------------------------------------------
    def targets(
        self,
        rollout_id: str | None = None,
        *,
        device_id: str | None = None,
        states: Iterable[str] | None = None,
    ) -> list[TargetInfo]:
        with self.store.read() as session:
            query = select(RolloutTargetRow).order_by(
                RolloutTargetRow.created, RolloutTargetRow.wave, RolloutTargetRow.device_id
            )
            if rollout_id is not None:
                query = query.where(RolloutTargetRow.rollout_id == rollout_id)
            if device_id is not None:
                query = query.where(RolloutTargetRow.device_id == device_id)
            if states is not None:
                query = query.where(RolloutTargetRow.state.in_(tuple(states)))
            return [_columns(row, TargetInfo) for row in session.scalars(query)]

    def get_target(self, deploy_id: str) -> TargetInfo | None:
        with self.store.read() as session:
            row = session.get(RolloutTargetRow, deploy_id)
            return None if row is None else _columns(row, TargetInfo)

    def claim_target(self, deploy_id: str, state: str, owner: str, lease_s: float) -> bool:
        """Take a target in ``state`` for ``lease_s`` seconds unless another process holds it."""
        now = time.time()
        with self.store.transaction() as session:
            claimed = session.execute(
                update(RolloutTargetRow)
                .where(
                    RolloutTargetRow.deploy_id == deploy_id,
                    RolloutTargetRow.state == state,
                    (RolloutTargetRow.claim_until.is_(None))
                    | (RolloutTargetRow.claim_until < now)
                    | (RolloutTargetRow.claimed_by == owner),
                )
                .values(claimed_by=owner, claim_until=now + lease_s)
            ).rowcount
            return bool(claimed)

    def release_target(self, deploy_id: str, owner: str) -> None:
        with self.store.transaction() as session:
            session.execute(
                update(RolloutTargetRow)
                .where(
                    RolloutTargetRow.deploy_id == deploy_id, RolloutTargetRow.claimed_by == owner
                )
                .values(claimed_by=None, claim_until=None)
            )

    def claim_targets(
        self, deploy_ids: Iterable[str], state: str, owner: str, lease_s: float
    ) -> list[str]:
        """Take the targets still in ``state`` and not held by another process (one transaction);
        returns the ones this owner holds now."""
        now = time.time()
        claimed = []
        with self.store.transaction() as session:
            for deploy_id in deploy_ids:
                if session.execute(
                    update(RolloutTargetRow)
                    .where(
                        RolloutTargetRow.deploy_id == deploy_id,
                        RolloutTargetRow.state == state,
                        (RolloutTargetRow.claim_until.is_(None))
                        | (RolloutTargetRow.claim_until < now)
                        | (RolloutTargetRow.claimed_by == owner),
                    )
                    .values(claimed_by=owner, claim_until=now + lease_s)
                ).rowcount:
                    claimed.append(deploy_id)
        return claimed

    def mark_sent(
        self, deploy_id: str, owner: str, *, build: Callable[[int], DeployCmd]
    ) -> int | None:
        """Give the target its deploy sequence and record its deploy command, in one transaction.

        ``build(sequence) -> DeployCmd``. Returns the sequence, or None when the claim was lost.
        The command driver publishes the command once the transaction is committed.
        """
        return self.mark_sent_many(owner, {deploy_id: build}).get(deploy_id)

    def mark_sent_many(
        self, owner: str, builds: dict[str, Callable[[int], DeployCmd]]
    ) -> dict[str, int]:
        """:meth:`mark_sent` for several claimed targets in one transaction, so that their
        commands are published together (a rollout's devices then fetch one stream)."""
        now = time.time()
        sent: dict[str, int] = {}
        with self.store.transaction() as session:
            for deploy_id, build in builds.items():
                row = session.get(RolloutTargetRow, deploy_id)
                if row is None or row.state != PENDING or row.claimed_by != owner:
                    continue
                sequence = self.next_sequence_in(session, row.device_id)
                [command] = self.commands.add_in(
                    session, [NewCommand(row.device_id, build(sequence))]
                )
                row.state, row.sequence = SENT, sequence
                row.command_msg_id = command.command_id
                row.sent_at = row.updated = now
                row.stage = "sent"
                row.claimed_by = row.claim_until = None
                sent[deploy_id] = sequence
        return sent

    def mark_rollback_sent(self, deploy_id: str, owner: str, *, command: RollbackCmd) -> bool:
        """Record the rollback command of a claimed target (the command driver publishes it)."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(RolloutTargetRow, deploy_id)
            if row is None or row.rollback_state != RB_PENDING or row.claimed_by != owner:
                return False
            [recorded] = self.commands.add_in(session, [NewCommand(row.device_id, command)])
            row.rollback_state, row.rollback_msg_id = RB_SENT, recorded.command_id
            row.claimed_by = row.claim_until = None
            row.updated = now
            return True

    def claim_rollback(self, deploy_id: str, owner: str, lease_s: float) -> bool:
        now = time.time()
        with self.store.transaction() as session:
            return bool(
                session.execute(
                    update(RolloutTargetRow)
                    .where(
                        RolloutTargetRow.deploy_id == deploy_id,
                        RolloutTargetRow.rollback_state == RB_PENDING,
                        (RolloutTargetRow.claim_until.is_(None))
                        | (RolloutTargetRow.claim_until < now)
                        | (RolloutTargetRow.claimed_by == owner),
                    )
                    .values(claimed_by=owner, claim_until=now + lease_s)
                ).rowcount
            )

    def update_target(
        self, deploy_id: str, *, expect_states: Iterable[str] | None = None, **changes: Any
    ) -> bool:
        """Change a target; with ``expect_states`` only while it is in one of them."""
        with self.store.transaction() as session:
            query = update(RolloutTargetRow).where(RolloutTargetRow.deploy_id == deploy_id)
            if expect_states is not None:
                query = query.where(RolloutTargetRow.state.in_(tuple(expect_states)))
            return bool(session.execute(query.values(updated=time.time(), **changes)).rowcount)

    def skip_open(self, rollout_id: str, reason: str) -> list[str]:
        """Targets not yet sent end as skipped; returns their devices."""
        now = time.time()
        with self.store.transaction() as session:
            rows = session.scalars(
                select(RolloutTargetRow).where(
                    RolloutTargetRow.rollout_id == rollout_id,
                    RolloutTargetRow.state.in_((WAITING, PENDING)),
                )
            ).all()
            for row in rows:
                row.state, row.detail, row.finished_at, row.updated = SKIPPED, reason, now, now
            return [row.device_id for row in rows]

    def request_rollbacks(
        self, rollout_id: str, reason: str, *, wave: int | None = None
    ) -> list[str]:
        """Ask for the rollback of the committed (or timed-out) targets, of one wave or all."""
        now = time.time()
        with self.store.transaction() as session:
            query = select(RolloutTargetRow).where(
                RolloutTargetRow.rollout_id == rollout_id,
                RolloutTargetRow.state.in_((COMMITTED, TIMEOUT)),
                RolloutTargetRow.rollback_state.is_(None),
            )
            if wave is not None:
                query = query.where(RolloutTargetRow.wave == wave)
            rows = session.scalars(query).all()
            for row in rows:
                row.rollback_state, row.rollback_reason, row.updated = RB_PENDING, reason, now
            return [row.device_id for row in rows]

    def counts_by_state(self) -> dict[str, int]:
        with self.store.read() as session:
            rows = session.execute(
                select(RolloutTargetRow.state, func.count()).group_by(RolloutTargetRow.state)
            ).all()
            return {state: int(count) for state, count in rows}

    def rollout_counts_by_status(self) -> dict[str, int]:
        with self.store.read() as session:
            rows = session.execute(
                select(RolloutRow.status, func.count()).group_by(RolloutRow.status)
            ).all()
            return {status: int(count) for status, count in rows}


__all__ = [
    "ABORTED",
    "ACTIVE",
    "CANCELLED",
    "COMMITTED",
    "DONE",
    "FAILED",
    "FAILED_STATES",
    "FINAL_STATES",
    "OPEN_STATES",
    "PENDING",
    "REVERTED",
    "ROLLED_BACK",
    "ROLLED_BACK_ROLLOUT",
    "SENT",
    "SKIPPED",
    "SUPERSEDED",
    "TIMEOUT",
    "UNDONE_STATES",
    "WAITING",
    "WAVE_ROLLED_BACK",
    "DeploymentStore",
    "NewTarget",
    "RolloutInfo",
    "TargetInfo",
]
