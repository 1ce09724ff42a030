"""The service's own tables: API tokens (stored hashed, each with a scope) and its background jobs
(campaigns).

A token's scope is what it may do: ``read`` (every GET), ``operate`` (also benchmarks, uploads,
deployments, rollbacks, cancelling) or ``admin`` (also campaigns that run code of a module the
operator allowed). Each scope includes the ones before it. Tokens made before scopes existed have
none stored and keep the full power they had: they count as ``admin``.

A service job is claimed with a lease that its runner renews; a job whose lease ran out (the
process died) is taken again by the next service that looks, which resumes the campaign from what
the campaign tables hold. The claim is a conditional update, so two service processes on one
PostgreSQL never run the same job at once.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, Float, String, Text, func, select, update
from sqlalchemy.orm import Mapped, mapped_column

from host.errors import ConfigError
from host.security import Scope
from host.store.models import Base
from host.store.repository import Store, _columns

JOB_QUEUED = "queued"
JOB_RUNNING = "running"
JOB_DONE = "done"
JOB_FAILED = "failed"
JOB_CANCELLING = "cancelling"
JOB_CANCELLED = "cancelled"
SERVICE_JOB_STATES = (JOB_QUEUED, JOB_RUNNING, JOB_DONE, JOB_FAILED, JOB_CANCELLING, JOB_CANCELLED)


class ApiTokenRow(Base):
    __tablename__ = "api_tokens"

    token_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    created: Mapped[float] = mapped_column(Float)
    revoked: Mapped[float | None] = mapped_column(Float, nullable=True)
    # NULL: a token made before scopes existed, which keeps the full power it had (admin).
    scope: Mapped[str | None] = mapped_column(String(16), nullable=True)
    name: Mapped[str | None] = mapped_column(String(64), nullable=True)


@dataclass(frozen=True)
class TokenInfo:
    """A token as `edgetailor token list` shows it (never the token itself: only its hash is kept)."""

    token_id: str
    scope: Scope
    name: str
    created: float
    revoked: float | None


def _token_info(row: ApiTokenRow) -> TokenInfo:
    return TokenInfo(
        token_id=row.token_id, scope=Scope(row.scope or Scope.ADMIN), name=row.name or "",
        created=row.created, revoked=row.revoked,
    )  # fmt: skip


class ServiceJobRow(Base):
    __tablename__ = "service_jobs"

    job_id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the campaign id
    kind: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16), index=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    claimed_by: Mapped[str | None] = mapped_column(String(128), nullable=True)
    claim_until: Mapped[float | None] = mapped_column(Float, nullable=True)
    progress: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class ServiceJobInfo:
    job_id: str
    kind: str
    state: str
    params: dict[str, Any]
    claimed_by: str | None
    claim_until: float | None
    progress: dict[str, Any]
    error: str | None
    created: float
    updated: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class ServiceStore:
    """Tokens and background jobs on top of a :class:`host.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- tokens ---------------------------------------------------------------------------------
    def has_token(self) -> bool:
        with self.store.read() as session:
            return (
                session.scalar(
                    select(func.count())
                    .select_from(ApiTokenRow)
                    .where(ApiTokenRow.revoked.is_(None))
                )
                > 0
            )

    def create_token(
        self, scope: Scope | str = Scope.ADMIN, *, name: str = "", revoke_others: bool = False
    ) -> tuple[TokenInfo, str]:
        """A fresh bearer token and its record; only its hash is stored, so this is the one time
        the token is seen."""
        try:
            scope = Scope(scope)
        except ValueError:
            raise ConfigError(
                f"unknown token scope {scope!r}; use one of {', '.join(s.value for s in Scope)}"
            ) from None
        if len(name) > 64:
            raise ConfigError(f"a token name has at most 64 characters; {name[:20]!r}... has more")
        token = f"et_{secrets.token_urlsafe(32)}"
        now = time.time()
        with self.store.transaction() as session:
            if revoke_others:
                session.execute(
                    update(ApiTokenRow).where(ApiTokenRow.revoked.is_(None)).values(revoked=now)
                )
            row = ApiTokenRow(
                token_id=secrets.token_hex(8), sha256=_hash(token), created=now,
                scope=scope.value, name=name or None,
            )  # fmt: skip
            session.add(row)
            session.flush()
            return _token_info(row), token

    def new_token(
        self, scope: Scope | str = Scope.ADMIN, *, name: str = "", revoke_others: bool = False
    ) -> str:
        """A fresh bearer token (see :meth:`create_token`)."""
        return self.create_token(scope, name=name, revoke_others=revoke_others)[1]

    def token_scope(self, token: str) -> Scope | None:
        """The scope of a valid (known, not revoked) token; None for any other string."""
        digest = _hash(token)
        with self.store.read() as session:
            rows = session.execute(
                select(ApiTokenRow.sha256, ApiTokenRow.scope).where(ApiTokenRow.revoked.is_(None))
            ).all()
        found: Scope | None = None
        for known, scope in rows:  # compare with every one: the time taken says nothing
            if hmac.compare_digest(digest, known):
                found = Scope(scope or Scope.ADMIN)
        return found

    def check_token(self, token: str) -> bool:
        return self.token_scope(token) is not None

    def list_tokens(self, *, include_revoked: bool = False) -> list[TokenInfo]:
        with self.store.read() as session:
            query = select(ApiTokenRow).order_by(ApiTokenRow.created)
            if not include_revoked:
                query = query.where(ApiTokenRow.revoked.is_(None))
            return [_token_info(row) for row in session.scalars(query)]

    def revoke_token(self, token_id: str) -> TokenInfo:
        """Revoke a token by its id (as `token list` shows it); revoking twice changes nothing."""
        with self.store.transaction() as session:
            row = session.get(ApiTokenRow, token_id)
            if row is None:
                known = ", ".join(
                    session.scalars(
                        select(ApiTokenRow.token_id).where(ApiTokenRow.revoked.is_(None))
                    )
                )
                raise ConfigError(
                    f"no token with id {token_id!r}; tokens in use: {known or 'none'} "
                    "(`edgetailor token list`)"
                )
            if row.revoked is None:
                row.revoked = time.time()
            session.flush()
            return _token_info(row)

    # -- jobs -----------------------------------------------------------------------------------
    def put_job(self, job_id: str, kind: str, params: dict[str, Any]) -> ServiceJobInfo:
        """Queue a job; a finished one with this id is queued again (a campaign resumed)."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(ServiceJobRow, job_id)
            if row is None:
                row = ServiceJobRow(
                    job_id=job_id, kind=kind, state=JOB_QUEUED, params=params, progress={},
                    created=now, updated=now,
                )  # fmt: skip
                session.add(row)
            elif row.state not in (JOB_QUEUED, JOB_RUNNING, JOB_CANCELLING):
                row.state, row.error, row.params, row.updated = JOB_QUEUED, None, params, now
                row.claimed_by = row.claim_until = None
            session.flush()
            return _columns(row, ServiceJobInfo)

    def get_job(self, job_id: str) -> ServiceJobInfo | None:
        with self.store.read() as session:
            row = session.get(ServiceJobRow, job_id)
            return None if row is None else _columns(row, ServiceJobInfo)

    def list_jobs(self, kind: str | None = None) -> list[ServiceJobInfo]:
        with self.store.read() as session:
            query = select(ServiceJobRow).order_by(ServiceJobRow.created)
            if kind is not None:
                query = query.where(ServiceJobRow.kind == kind)
            return [_columns(row, ServiceJobInfo) for row in session.scalars(query)]

    def claim_next(self, owner: str, lease_s: float) -> ServiceJobInfo | None:
        """A queued job, or a running one whose runner stopped renewing its lease."""
        now = time.time()
        with self.store.read() as session:
            candidates = session.scalars(
                select(ServiceJobRow.job_id)
                .where(
                    ServiceJobRow.state.in_((JOB_QUEUED, JOB_RUNNING)),
                    (ServiceJobRow.claim_until.is_(None)) | (ServiceJobRow.claim_until < now),
                )
                .order_by(ServiceJobRow.created)
            ).all()
        for job_id in candidates:
            with self.store.transaction() as session:
                claimed = session.execute(
                    update(ServiceJobRow)
                    .where(
                        ServiceJobRow.job_id == job_id,
                        ServiceJobRow.state.in_((JOB_QUEUED, JOB_RUNNING)),
                        (ServiceJobRow.claim_until.is_(None)) | (ServiceJobRow.claim_until < now),
                    )
                    .values(
                        state=JOB_RUNNING, claimed_by=owner, claim_until=now + lease_s, updated=now
                    )
                ).rowcount
            if claimed:
                return self.get_job(job_id)
        return None

    def renew(
        self, job_id: str, owner: str, lease_s: float, progress: dict[str, Any] | None
    ) -> str:
        """Extend the lease; returns the job's state (``cancelling`` tells the runner to stop)."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(ServiceJobRow, job_id)
            if row is None:
                return JOB_CANCELLED
            if row.claimed_by == owner:
                row.claim_until = now + lease_s
                if progress is not None:
                    row.progress = progress
                row.updated = now
            return row.state

    def release(self, job_id: str, owner: str) -> None:
        """Give up the lease without finishing: the next service to look takes the job over."""
        with self.store.transaction() as session:
            row = session.get(ServiceJobRow, job_id)
            if row is not None and row.claimed_by == owner:
                row.claimed_by = row.claim_until = None

    def finish(self, job_id: str, owner: str, state: str, error: str | None = None) -> None:
        with self.store.transaction() as session:
            row = session.get(ServiceJobRow, job_id)
            if row is not None and row.claimed_by == owner:
                if row.state == JOB_CANCELLING:
                    state = JOB_CANCELLED
                row.state, row.error, row.updated = state, error, time.time()
                row.claimed_by = row.claim_until = None

    def request_cancel(self, job_id: str) -> str | None:
        """Cancel a queued job at once, a running one when its runner next looks; the new state."""
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(ServiceJobRow, job_id)
            if row is None:
                return None
            if row.state == JOB_QUEUED:
                row.state = JOB_CANCELLED
            elif row.state == JOB_RUNNING:
                row.state = JOB_CANCELLING
            row.updated = now
            return row.state

    def counts_by_state(self) -> dict[str, int]:
        with self.store.read() as session:
            rows = session.execute(
                select(ServiceJobRow.state, func.count()).group_by(ServiceJobRow.state)
            ).all()
            return {state: int(count) for state, count in rows}


__all__ = [
    "JOB_CANCELLED",
    "JOB_CANCELLING",
    "JOB_DONE",
    "JOB_FAILED",
    "JOB_QUEUED",
    "JOB_RUNNING",
    "Scope",
    "ServiceJobInfo",
    "ServiceStore",
    "TokenInfo",
]
