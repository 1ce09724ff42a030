"""The command table's repository: record commands, find the ones to publish, store each final
answer once, cancel, expire, and hand out the per-device sequence numbers.

Every transition is a conditional update on the row's state, so several host processes on one
database never both store an answer: the one whose update matched stored it, the others see a
duplicate. Reads return :class:`CommandInfo` (plain, frozen), whose body and result are the typed
structs (host.commands.kinds), never dicts.
"""

from __future__ import annotations

import secrets
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgspec
from sqlalchemy import bindparam, case, delete, insert, literal_column, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from host.commands.kinds import KINDS, CommandKind, kind_of
from host.commands.models import (
    CANCELLED,
    EXPIRED,
    FINAL_STATES,
    OPEN_STATES,
    PENDING,
    PUBLISHED,
    RUNNING,
    SENT,
    CommandRow,
    SequenceRow,
    StoreIdentityRow,
)
from host.errors import ConfigError
from host.store.repository import Store
from shared.errors import ValidationError
from shared.messages import Body, CancelCmd

T = TypeVar("T", bound=msgspec.Struct)

# How long a command waits for its device by default before it is given up.
DEFAULT_EXPIRY_S = 7 * 24 * 3600.0
# Ids per IN (...) list, rows per multi-row statement: within every database's parameter limit.
_IN_LIMIT = 500
# The table itself: the pipeline's hot statements are Core statements (no ORM objects per row).
_TABLE = CommandRow.__table__


@dataclass(frozen=True)
class CommandInfo:
    """One command as stored; :meth:`body` and :meth:`result` are the typed structs."""

    command_id: str
    device_id: str
    kind: str
    job_id: str
    body_json: str
    model_sha256: str | None
    eval_sha256: str | None
    parent_id: str | None
    state: str
    stage: str | None
    attempts: int
    created: float
    updated: float
    published_at: float | None
    expires_at: float | None
    response_msg_id: str | None
    status: str | None
    result_json: str | None
    error_code: str | None
    error_message: str | None
    finished: float | None

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES

    @property
    def command_kind(self) -> CommandKind:
        return KINDS.get(self.kind)

    def body(self) -> Body:
        return self.command_kind.decode_body(self.body_json)

    def result(self) -> msgspec.Struct | None:
        """The typed result the device answered with (None before, or when it sent none)."""
        if self.result_json is None:
            return None
        return self.command_kind.decode_result(self.result_json)

    def result_as(self, cls: type[T]) -> T | None:
        """The result as ``cls`` (None before it came); ValidationError for another kind."""
        if self.command_kind.result is not cls:
            raise ValidationError(
                f"command {self.command_id} is a {self.kind}, whose result is not a {cls.__name__}"
            )
        result = self.result()
        return result  # type: ignore[return-value]


def _info(row: Any) -> CommandInfo:
    return CommandInfo(
        command_id=row.command_id, device_id=row.device_id, kind=row.kind, job_id=row.job_id,
        body_json=row.body, model_sha256=row.model_sha256, eval_sha256=row.eval_sha256,
        parent_id=row.parent_id, state=row.state, stage=row.stage, attempts=int(row.attempts),
        created=row.created, updated=row.updated, published_at=row.published_at,
        expires_at=row.expires_at, response_msg_id=row.response_msg_id, status=row.status,
        result_json=row.result, error_code=row.error_code, error_message=row.error_message,
        finished=row.finished,
    )  # fmt: skip


@dataclass(frozen=True)
class NewCommand:
    """A command to record: its device, its body, when it is given up (None: the default)."""

    device_id: str
    body: Body
    expires_at: float | None = None
    parent_id: str | None = None
    command_id: str | None = None  # made from the store id when not given


@dataclass(frozen=True)
class Due:
    """What the driver needs to publish a command (read without building ORM objects)."""

    command_id: str
    device_id: str
    kind: str
    body_json: str
    state: str
    published_at: float | None
    expires_at: float | None
    model_sha256: str | None
    eval_sha256: str | None
    created: float = 0.0


@dataclass(frozen=True)
class FinalAnswer:
    """One final answer to store (:meth:`CommandStore.store_finals`); ``result`` is the typed
    result's JSON."""

    command_id: str
    response_msg_id: str
    status: str
    state: str
    result: str | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class Stored:
    """What happened to one final response the host received."""

    command_id: str
    device_id: str
    response_msg_id: str
    verdict: str  # stored | duplicate | unknown | foreign | misaddressed | unanswered
    state: str | None = None


class CommandStore:
    """Commands in the host's database (tables created on first use)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._store_id: str | None = None
        self.store_id  # noqa: B018 - read (or made) now, never inside another transaction

    # -- identity --------------------------------------------------------------------------------
    @property
    def store_id(self) -> str:
        """This database's own random id (8 hex digits), made the first time it is asked for."""
        if self._store_id is None:
            with self.store.read() as session:
                row = session.get(StoreIdentityRow, "store")
                value = row.value if row is not None else None
            if value is None:
                value = secrets.token_hex(4)
                try:
                    with self.store.transaction() as session:
                        session.add(
                            StoreIdentityRow(name="store", value=value, created=time.time())
                        )
                except IntegrityError:
                    pass  # another process made it first: read theirs
                with self.store.read() as session:
                    row = session.get(StoreIdentityRow, "store")
                    value = row.value if row is not None else value
            self._store_id = value
        return self._store_id

    def note_host_key(self, key_id: str, previous: Iterable[str] = ()) -> str | None:
        """Record the key this database's commands are signed with; returns the key id another
        host process recorded before when it is neither this key nor one it rotated from
        (replicas on one database must share their key), else None."""
        previous = list(previous)
        try:
            return self._note_host_key(key_id, previous)
        except IntegrityError:  # another process recorded it at the same moment: compare
            return self._note_host_key(key_id, previous)

    def _note_host_key(self, key_id: str, previous: list[str]) -> str | None:
        with self.store.transaction() as session:
            row = session.get(StoreIdentityRow, "host_key")
            if row is None:
                session.add(StoreIdentityRow(name="host_key", value=key_id, created=time.time()))
                return None
            if row.value == key_id:
                return None
            if row.value in set(previous):
                row.value = key_id  # this host rotated it
                return None
            return row.value

    def new_id(self) -> str:
        return f"{self.store_id}-{uuid.uuid4().hex}"

    def is_ours(self, command_id: str | None) -> bool:
        return command_id is not None and command_id.startswith(self.store_id + "-")

    # -- recording -------------------------------------------------------------------------------
    def add(self, commands: Sequence[NewCommand]) -> list[CommandInfo]:
        """Record commands (one transaction); the driver publishes them when their device is
        online. A body that breaks the wire contract is a ConfigError, and nothing is recorded."""
        with self.store.transaction() as session:
            return self.add_in(session, commands)

    def add_in(
        self, session: Session, commands: Sequence[NewCommand], *, state: str = PENDING
    ) -> list[CommandInfo]:
        """Record commands inside the caller's transaction (a deploy target and its command are
        written together). ``state=SENT``: fire-and-forget commands (acks) recorded as published
        by the caller once this transaction commits."""
        now = time.time()
        sent = state == SENT
        rows: list[dict[str, Any]] = []
        for new in commands:
            kind = kind_of(new.body)
            data = msgspec.json.encode(new.body)
            try:
                # Struct constructors skip the wire constraints (bounds, patterns): check them.
                msgspec.json.decode(data, type=kind.body)
            except msgspec.ValidationError as exc:
                raise ConfigError(f"invalid {kind.name} command: {exc}") from exc
            command_id = new.command_id or self.new_id()
            artifacts = kind.artifacts(new.body)
            rows.append({
                "command_id": command_id, "device_id": new.device_id, "kind": kind.name,
                "job_id": kind.job_id(new.body) or command_id, "body": data.decode("utf-8"),
                "model_sha256": artifacts[0].sha256 if artifacts else None,
                "eval_sha256": artifacts[1].sha256 if len(artifacts) > 1 else None,
                "parent_id": new.parent_id, "state": state, "stage": None,
                "attempts": 1 if sent else 0, "created": now, "updated": now,
                "published_at": now if sent else None,
                "expires_at": new.expires_at if new.expires_at is not None
                else now + DEFAULT_EXPIRY_S,
                "response_msg_id": None, "status": None, "result": None, "error_code": None,
                "error_message": None, "finished": now if sent else None,
            })  # fmt: skip
        if rows:
            session.execute(insert(_TABLE), rows)
        return [_info(_Row(r)) for r in rows]

    # -- reading ---------------------------------------------------------------------------------
    def get(self, command_id: str) -> CommandInfo | None:
        with self.store.read() as session:
            row = session.execute(
                select(*_TABLE.c).where(_TABLE.c.command_id == command_id)
            ).first()
            return None if row is None else _info(row)

    def find(self, job_or_command_id: str) -> CommandInfo | None:
        """A command by its id, or the newest command naming this job id."""
        found = self.get(job_or_command_id)
        if found is not None:
            return found
        with self.store.read() as session:
            row = session.execute(
                select(*_TABLE.c)
                .where(_TABLE.c.job_id == job_or_command_id)
                .order_by(_TABLE.c.created.desc())
                .limit(1)
            ).first()
            return None if row is None else _info(row)

    def many(self, command_ids: Iterable[str]) -> dict[str, CommandInfo]:
        ids = list(dict.fromkeys(command_ids))
        if not ids:
            return {}
        found: dict[str, CommandInfo] = {}
        with self.store.read() as session:
            for start in range(0, len(ids), _IN_LIMIT):
                rows = session.execute(
                    select(*_TABLE.c).where(_TABLE.c.command_id.in_(ids[start : start + _IN_LIMIT]))
                )
                found.update((row.command_id, _info(row)) for row in rows)
        return found

    def states(self, command_ids: Sequence[str]) -> dict[str, str]:
        """The state of each of these commands (those the database has)."""
        found: dict[str, str] = {}
        t = _TABLE.c
        with self.store.read() as session:
            for start in range(0, len(command_ids), _IN_LIMIT):
                rows = session.execute(
                    select(t.command_id, t.state).where(
                        t.command_id.in_(command_ids[start : start + _IN_LIMIT])
                    )
                )
                found.update((cid, state) for cid, state in rows)
        return found

    def list(
        self,
        *,
        device_id: str | None = None,
        kinds: Iterable[str] | None = None,
        states: Iterable[str] | None = None,
        since: float | None = None,
        finished_only: bool = False,
        limit: int | None = None,
        newest_first: bool = False,
    ) -> list[CommandInfo]:
        with self.store.read() as session:
            query = select(*_TABLE.c)
            if device_id is not None:
                query = query.where(CommandRow.device_id == device_id)
            if kinds is not None:
                query = query.where(CommandRow.kind.in_(tuple(kinds)))
            if states is not None:
                query = query.where(CommandRow.state.in_(tuple(states)))
            if since is not None:
                query = query.where(CommandRow.created >= since)
            if finished_only:
                query = query.where(CommandRow.finished.is_not(None))
            order = CommandRow.finished if finished_only else CommandRow.created
            query = query.order_by(order.desc() if newest_first else order)
            if limit is not None:
                query = query.limit(limit)
            return [_info(row) for row in session.execute(query)]

    # -- publishing (the driver) -----------------------------------------------------------------
    def due(self, *, pending_only: bool, limit: int = 2000) -> list[Due]:
        """Open commands that want an answer: the pending ones, or every open one."""
        columns = (
            CommandRow.command_id, CommandRow.device_id, CommandRow.kind, CommandRow.body,
            CommandRow.state, CommandRow.published_at, CommandRow.expires_at,
            CommandRow.model_sha256, CommandRow.eval_sha256, CommandRow.created,
        )  # fmt: skip
        query = select(*columns).order_by(CommandRow.created).limit(limit)
        if pending_only:
            query = query.where(CommandRow.state == PENDING)
        else:
            query = query.where(CommandRow.state.in_(OPEN_STATES))
        with self.store.read() as session:
            return [Due(*row) for row in session.execute(query).all()]

    @staticmethod
    def allocate_sequences(session: Session, device_id: str, count: int) -> int:
        """Reserve ``count`` sequence numbers of this device; returns the first.

        Numbers never go below the current time in milliseconds, so a host whose database was
        lost, or a second database commanding the same device, still counts above what the
        device has seen (its replay window refuses anything older).
        """
        return CommandStore.allocate_many(session, {device_id: count})[device_id]

    @staticmethod
    def allocate_many(session: Session, counts: dict[str, int]) -> dict[str, int]:
        """Reserve sequence numbers for several devices at once (``counts``: device -> how
        many); returns the first number of each. One statement per few hundred devices."""
        floor = int(time.time() * 1000)
        firsts: dict[str, int] = {}
        devices = sorted(d for d, n in counts.items() if n > 0)  # one lock order for every host
        dialect = session.get_bind().dialect.name
        if dialect not in ("sqlite", "postgresql"):
            for device_id in devices:
                count = counts[device_id]
                row = session.get(SequenceRow, device_id, with_for_update=True)
                top = max((row.seq if row is not None else 0) + count, floor + count - 1)
                if row is None:
                    session.add(SequenceRow(device_id=device_id, seq=top))
                else:
                    row.seq = top
                firsts[device_id] = top - count + 1
            return firsts
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as dialect_insert
        else:
            from sqlalchemy.dialects.postgresql import insert as dialect_insert
        table = SequenceRow.__table__
        # A new row starts at floor + count - 1 (its "excluded" value); a row there already grows
        # by count (= excluded - floor + 1), and never below that floor either. One statement,
        # executed for every device (the floor is written into it: an integer, as SQL text).
        stmt = dialect_insert(table)
        bumped = table.c.seq + stmt.excluded.seq - literal_column(str(int(floor) - 1))
        stmt = stmt.on_conflict_do_update(
            index_elements=[table.c.device_id],
            set_={"seq": case((bumped > stmt.excluded.seq, bumped), else_=stmt.excluded.seq)},
        ).returning(table.c.device_id, table.c.seq, sort_by_parameter_order=True)
        params = [{"device_id": d, "seq": floor + counts[d] - 1} for d in devices]
        for device_id, top in session.execute(stmt, params).all():
            firsts[device_id] = int(top) - counts[device_id] + 1
        return firsts

    def mark_published(
        self, session: Session, command_ids: Sequence[str], fire_and_forget: Sequence[str]
    ) -> None:
        """Note a publish: pending commands become published (acks become sent, final)."""
        now = time.time()
        t = _TABLE.c
        ids = list(command_ids)
        for start in range(0, len(ids), _IN_LIMIT):
            session.execute(
                _TABLE.update()
                .where(t.command_id.in_(ids[start : start + _IN_LIMIT]))
                .values(
                    state=case((t.state == PENDING, PUBLISHED), else_=t.state),
                    attempts=t.attempts + 1,
                    published_at=now,
                    updated=now,
                )
            )
        sent = list(fire_and_forget)
        for start in range(0, len(sent), _IN_LIMIT):
            session.execute(
                _TABLE.update()
                .where(t.command_id.in_(sent[start : start + _IN_LIMIT]))
                .values(state=SENT, finished=now)
            )

    # -- answers ---------------------------------------------------------------------------------
    def note_stages(self, session: Session, stages: dict[str, str]) -> None:
        """Progress: the stage each command's device reports; published commands run now."""
        now = time.time()
        by_stage: dict[str, list[str]] = {}
        for command_id, stage in stages.items():
            by_stage.setdefault(stage[:32], []).append(command_id)
        t = _TABLE.c
        for stage, ids in by_stage.items():  # a handful of stages: one statement each
            for start in range(0, len(ids), _IN_LIMIT):
                session.execute(
                    _TABLE.update()
                    .where(
                        t.command_id.in_(ids[start : start + _IN_LIMIT]), t.state.in_(OPEN_STATES)
                    )
                    .values(state=RUNNING, stage=stage, updated=now)
                )

    def store_final(
        self,
        session: Session,
        command_id: str,
        *,
        response_msg_id: str,
        status: str,
        state: str,
        result: msgspec.Struct | None,
        error_code: str | None,
        error_message: str | None,
    ) -> bool:
        """Store a final answer unless one is stored already; True when this call stored it.

        A command cancelled or expired meanwhile keeps its state, but the late answer is kept:
        it says what the device did.
        """
        answer = FinalAnswer(
            command_id, response_msg_id, status, state,
            msgspec.json.encode(result).decode("utf-8") if result is not None else None,
            error_code, error_message,
        )  # fmt: skip
        return command_id in self.store_finals(session, [answer])

    def store_finals(self, session: Session, answers: Sequence[FinalAnswer]) -> set[str]:
        """Store several final answers in one statement (executed once per answer); returns the
        ids of the commands whose answer this call stored (each command keeps its first)."""
        if not answers:
            return set()
        now = time.time()
        t = _TABLE.c
        ids = list(dict.fromkeys(a.command_id for a in answers))
        answered: set[str] = set()  # the commands with an answer stored already
        for start in range(0, len(ids), _IN_LIMIT):
            answered.update(
                session.scalars(
                    select(t.command_id).where(
                        t.command_id.in_(ids[start : start + _IN_LIMIT]),
                        t.response_msg_id.is_not(None),
                    )
                )
            )
        tried: dict[str, FinalAnswer] = {}  # the first answer of each command without one
        for answer in answers:
            if answer.command_id not in answered:
                tried.setdefault(answer.command_id, answer)
        if not tried:
            return set()
        stmt = (
            _TABLE.update()
            .where(t.command_id == bindparam("b_command_id"), t.response_msg_id.is_(None))
            .values(
                response_msg_id=bindparam("b_response_msg_id"),
                status=bindparam("b_status"),
                result=bindparam("b_result"),
                error_code=bindparam("b_error_code"),
                error_message=bindparam("b_error_message"),
                updated=now,
                # (no IN list: an executemany cannot expand one)
                state=case(
                    (or_(*(t.state == open_ for open_ in OPEN_STATES)), bindparam("b_state")),
                    else_=t.state,
                ),
                finished=case((t.finished.is_(None), now), else_=t.finished),
            )
        )
        params = [
            {
                "b_command_id": a.command_id, "b_response_msg_id": a.response_msg_id,
                "b_status": a.status, "b_result": a.result, "b_error_code": a.error_code,
                "b_error_message": (a.error_message or "")[:4000] or None, "b_state": a.state,
            }
            for a in tried.values()
        ]  # fmt: skip
        matched = session.execute(stmt, params).rowcount
        if matched == len(tried):  # the usual case: each of them stored, by this call
            return set(tried)
        # Another host process stored some meanwhile: those holding our envelope are ours.
        stored: set[str] = set()
        wanted = list(tried)
        for start in range(0, len(wanted), _IN_LIMIT):
            rows = session.execute(
                select(t.command_id, t.response_msg_id).where(
                    t.command_id.in_(wanted[start : start + _IN_LIMIT])
                )
            )
            stored.update(cid for cid, msg_id in rows if tried[cid].response_msg_id == msg_id)
        return stored

    @staticmethod
    def stored_responses(session: Session, response_msg_ids: Iterable[str]) -> set[str]:
        """Which of these response msg_ids are stored already (each is unique)."""
        ids = list(dict.fromkeys(response_msg_ids))
        if not ids:
            return set()
        return set(
            session.scalars(
                select(CommandRow.response_msg_id).where(CommandRow.response_msg_id.in_(ids))
            )
        )

    def refuse(self, session: Session, command_id: str, code: str, message: str) -> bool:
        """The device refused the command (its signature, key, expiry or address): it fails."""
        now = time.time()
        return bool(
            session.execute(
                update(CommandRow)
                .where(CommandRow.command_id == command_id, CommandRow.state.in_(OPEN_STATES))
                .values(
                    state="failed",
                    error_code=code,
                    error_message=message[:4000],
                    updated=now,
                    finished=now,
                )
            ).rowcount
        )

    # -- cancelling and expiring -----------------------------------------------------------------
    def request_cancel(self, command_id: str, *, expires_at: float | None = None) -> bool:
        """Cancel an open command: it ends as cancelled at once; if it was published, a signed
        cancel command for its job is recorded for the driver to send. False when it had ended."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(CommandRow, command_id)
            if row is None or row.state not in OPEN_STATES:
                return False
            was_published = row.state != PENDING
            session.execute(
                update(CommandRow)
                .where(CommandRow.command_id == command_id, CommandRow.state.in_(OPEN_STATES))
                .values(
                    state=CANCELLED,
                    error_code="cancelled",
                    error_message="cancelled on request",
                    updated=now,
                    finished=now,
                )
            )
            if was_published and KINDS.get(row.kind).job_field is not None:
                self.add_in(session, [NewCommand(
                    row.device_id, CancelCmd(job_id=row.job_id), parent_id=command_id,
                    expires_at=expires_at,
                )])  # fmt: skip
            return True

    def expire_due(self, now: float | None = None) -> list[str]:
        """Open commands past their expiry end as expired; returns their ids."""
        now = time.time() if now is None else now
        with self.store.transaction() as session:
            ids = list(
                session.scalars(
                    select(CommandRow.command_id).where(
                        CommandRow.state.in_(OPEN_STATES), CommandRow.expires_at < now
                    )
                )
            )
            if ids:
                session.execute(
                    update(CommandRow)
                    .where(CommandRow.command_id.in_(ids), CommandRow.state.in_(OPEN_STATES))
                    .values(
                        state=EXPIRED,
                        error_code="expired",
                        error_message="no answer before the command expired",
                        updated=now,
                        finished=now,
                    )
                )
            return ids

    def prune_sent(self, before: float) -> int:
        """Forget fire-and-forget commands (acks) published before ``before``."""
        with self.store.transaction() as session:
            return int(
                session.execute(
                    delete(CommandRow).where(CommandRow.state == SENT, CommandRow.finished < before)
                ).rowcount
            )

    # -- chunks ----------------------------------------------------------------------------------
    def grant_for(self, device_id: str, sha256: str, now: float | None = None) -> Due | None:
        """The open, unexpired command of this device that names this artifact, if any."""
        now = time.time() if now is None else now
        with self.store.read() as session:
            row = session.execute(
                select(
                    CommandRow.command_id,
                    CommandRow.device_id,
                    CommandRow.kind,
                    CommandRow.body,
                    CommandRow.state,
                    CommandRow.published_at,
                    CommandRow.expires_at,
                    CommandRow.model_sha256,
                    CommandRow.eval_sha256,
                )
                .where(
                    CommandRow.device_id == device_id,
                    CommandRow.state.in_(OPEN_STATES),
                    or_(CommandRow.model_sha256 == sha256, CommandRow.eval_sha256 == sha256),
                    or_(CommandRow.expires_at.is_(None), CommandRow.expires_at > now),
                )
                .order_by(CommandRow.created.desc())
                .limit(1)
            ).first()
            return None if row is None else Due(*row)

    def counts_by_kind_and_state(self) -> dict[tuple[str, str], int]:
        from sqlalchemy import func

        with self.store.read() as session:
            rows = session.execute(
                select(CommandRow.kind, CommandRow.state, func.count()).group_by(
                    CommandRow.kind, CommandRow.state
                )
            ).all()
            return {(kind, state): int(n) for kind, state, n in rows}


class _Row:
    """Attribute access over a dict, for building a CommandInfo from inserted values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.__dict__.update(values)


__all__ = ["DEFAULT_EXPIRY_S", "CommandInfo", "CommandStore", "Due", "NewCommand", "Stored"]
