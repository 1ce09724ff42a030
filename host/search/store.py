"""Search tables and their repository: searches, their trials per device, the board measurements
(claimed in the database, so that two workers or a restarted one never measure a variant twice),
and the graph features of artifacts (read once per file).

The tables live on ``host.store.models.Base`` beside the fleet's and the campaigns', in the same
database. Optuna's own tables (its studies and trials) are Optuna's, in the same database too.

A measurement row is the claim: its primary key is (search, device, variant), so exactly one
worker inserts it. It names the variant (candidate label, recipe, format, precision) and, once
measured, holds the host's judgement of the result (host.campaign.quality.Judgement) as a campaign
job does; the result itself is the agent's BenchmarkResult stored once with its command
(``fleet_job_id``), and host.search.report.measured_rows puts the two together. States::

    claimed -> sent -> ok | failed
    claimed|sent (claim expired: the worker died) -> taken over by another worker, which first
                                                      waits for the job the dead one sent
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, String, Text, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column

from host.store.models import Base
from host.store.repository import Store, _columns

CLAIMED = "claimed"
SENT = "sent"
MEASURED = "ok"
FAILED = "failed"
OPEN_MEASUREMENT_STATES = (CLAIMED, SENT)

# Trial decisions.
DECISION_MEASURED = "measured"  # a board measured it for this trial
DECISION_REUSED = "reused"  # the same variant was measured for an earlier trial (or worker)
DECISION_SKIPPED = "skipped"  # not measured: the reason says why (predicted infeasible, ...)
DECISION_FAILED = "failed"  # could not be built or measured
DECISIONS = (DECISION_MEASURED, DECISION_REUSED, DECISION_SKIPPED, DECISION_FAILED)


class SearchRow(Base):
    __tablename__ = "searches"

    search_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16))  # created | running | done | failed
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class SearchTrialRow(Base):
    __tablename__ = "search_trials"

    search_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    trial_number: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    params: Mapped[dict[str, Any]] = mapped_column(JSON)
    variant: Mapped[str | None] = mapped_column(String(64), nullable=True)
    recipe: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    host: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # metric, size, MACs
    prediction: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    decision: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str] = mapped_column(Text, default="")
    worker: Mapped[str] = mapped_column(String(128), default="")
    created: Mapped[float] = mapped_column(Float)


class SearchMeasurementRow(Base):
    __tablename__ = "search_measurements"

    search_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    variant: Mapped[str] = mapped_column(String(64), primary_key=True)
    state: Mapped[str] = mapped_column(String(16))
    worker: Mapped[str] = mapped_column(String(128))
    claim_until: Mapped[float] = mapped_column(Float)
    trial_number: Mapped[int] = mapped_column(BigInteger)
    fleet_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # What the variant is, for its result row: a final check has no trial to read it from.
    candidate: Mapped[str | None] = mapped_column(String(256), nullable=True)
    recipe_name: Mapped[str | None] = mapped_column(String(256), nullable=True)
    format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    precision: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # How the host judged the result of fleet_job_id (host.campaign.quality.Judgement, msgspec
    # JSON), as campaign_jobs.judgement.
    judgement: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class ArtifactFeaturesRow(Base):
    """The predictor's graph features of an exported file, read once."""

    __tablename__ = "artifact_features"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    version: Mapped[int] = mapped_column(BigInteger)
    features: Mapped[dict[str, Any]] = mapped_column(JSON)


@dataclass(frozen=True)
class SearchInfo:
    search_id: str
    spec: dict[str, Any]
    status: str
    state: dict[str, Any]
    selection: dict[str, Any] | None
    created: float
    updated: float


@dataclass(frozen=True)
class TrialInfo:
    search_id: str
    device_id: str
    trial_number: int
    params: dict[str, Any]
    variant: str | None
    recipe: list[dict[str, Any]]
    sha256: str | None
    host: dict[str, Any]
    prediction: dict[str, Any] | None
    decision: str
    reason: str
    worker: str
    created: float


@dataclass(frozen=True)
class MeasurementInfo:
    search_id: str
    device_id: str
    variant: str
    state: str
    worker: str
    claim_until: float
    trial_number: int
    fleet_job_id: str | None
    candidate: str | None
    recipe_name: str | None
    format: str | None
    precision: str | None
    judgement: str | None
    error: str | None
    created: float
    updated: float


@dataclass(frozen=True)
class Variant:
    """What a claimed measurement measures: the row's candidate label and the file's facts."""

    candidate: str
    recipe_name: str
    format: str
    precision: str


@dataclass(frozen=True)
class Claim:
    """The outcome of asking to measure a variant: ``mine`` (go and measure it; ``adopt`` is the
    job a dead worker sent, to wait for first) or not (``existing`` is whoever has it)."""

    mine: bool
    existing: MeasurementInfo | None = None
    adopt: str | None = None


class SearchStore:
    """Search state on top of a :class:`host.store.Store`."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- searches ------------------------------------------------------------------------------
    def create_search(self, search_id: str, spec: dict[str, Any]) -> SearchInfo:
        now = time.time()
        try:
            with self.store.transaction() as session:
                row = session.get(SearchRow, search_id)
                if row is None:
                    row = SearchRow(
                        search_id=search_id,
                        spec=spec,
                        status="created",
                        state={},
                        selection=None,
                        created=now,
                        updated=now,
                    )
                    session.add(row)
                return _columns(row, SearchInfo)
        except IntegrityError:  # another worker created it a moment before
            found = self.get_search(search_id)
            if found is None:
                raise
            return found

    def get_search(self, search_id: str) -> SearchInfo | None:
        with self.store.read() as session:
            row = session.get(SearchRow, search_id)
            return None if row is None else _columns(row, SearchInfo)

    def list_searches(self) -> list[SearchInfo]:
        with self.store.read() as session:
            rows = session.scalars(select(SearchRow).order_by(SearchRow.created))
            return [_columns(row, SearchInfo) for row in rows]

    def update_search(
        self,
        search_id: str,
        *,
        status: str | None = None,
        state: dict[str, Any] | None = None,
        selection: dict[str, Any] | None = None,
    ) -> None:
        def write(session: Any) -> None:
            row = session.get(SearchRow, search_id)
            if row is None:
                return
            if status is not None:
                row.status = status
            if state is not None:
                row.state = {**(row.state or {}), **state}
            if selection is not None:
                row.selection = selection
            row.updated = time.time()

        self.store.write_retrying(write)

    # -- trials --------------------------------------------------------------------------------
    def put_trial(self, info: TrialInfo) -> None:
        def write(session: Any) -> None:
            session.merge(
                SearchTrialRow(**{k: getattr(info, k) for k in TrialInfo.__dataclass_fields__})
            )

        self.store.write_retrying(write)

    def trials(self, search_id: str, device_id: str | None = None) -> list[TrialInfo]:
        with self.store.read() as session:
            query = select(SearchTrialRow).where(SearchTrialRow.search_id == search_id)
            if device_id is not None:
                query = query.where(SearchTrialRow.device_id == device_id)
            query = query.order_by(SearchTrialRow.device_id, SearchTrialRow.trial_number)
            return [_columns(row, TrialInfo) for row in session.scalars(query)]

    # -- measurements (claims) -----------------------------------------------------------------
    def claim(
        self,
        search_id: str,
        device_id: str,
        variant: str,
        worker: str,
        trial: int,
        lease_s: float,
        what: Variant | None = None,
    ) -> Claim:
        """Claim the measurement of ``variant`` (``what`` it is) on ``device_id`` (see the
        module doc)."""
        now = time.time()
        try:
            with self.store.transaction() as session:
                session.add(
                    SearchMeasurementRow(
                        search_id=search_id,
                        device_id=device_id,
                        variant=variant,
                        state=CLAIMED,
                        worker=worker,
                        claim_until=now + lease_s,
                        trial_number=trial,
                        candidate=what.candidate if what else None,
                        recipe_name=what.recipe_name if what else None,
                        format=what.format if what else None,
                        precision=what.precision if what else None,
                        created=now,
                        updated=now,
                    )
                )
            return Claim(True)
        except IntegrityError:
            pass
        existing = self.measurement(search_id, device_id, variant)
        if existing is None:  # removed in between: try once more
            return self.claim(search_id, device_id, variant, worker, trial, lease_s, what)
        if existing.state in OPEN_MEASUREMENT_STATES and existing.claim_until < now:
            # Its worker died (or stopped renewing): take it over, conditionally, so that one of
            # several survivors wins.
            with self.store.transaction() as session:
                taken = session.execute(
                    update(SearchMeasurementRow)
                    .where(
                        SearchMeasurementRow.search_id == search_id,
                        SearchMeasurementRow.device_id == device_id,
                        SearchMeasurementRow.variant == variant,
                        SearchMeasurementRow.worker == existing.worker,
                        SearchMeasurementRow.claim_until == existing.claim_until,
                    )
                    .values(worker=worker, claim_until=now + lease_s, updated=now)
                ).rowcount
            if taken == 1:
                return Claim(True, existing, adopt=existing.fleet_job_id)
        return Claim(False, existing)

    def renew(
        self, search_id: str, device_id: str, variant: str, worker: str, lease_s: float
    ) -> bool:
        with self.store.transaction() as session:
            return (
                session.execute(
                    update(SearchMeasurementRow)
                    .where(
                        SearchMeasurementRow.search_id == search_id,
                        SearchMeasurementRow.device_id == device_id,
                        SearchMeasurementRow.variant == variant,
                        SearchMeasurementRow.worker == worker,
                    )
                    .values(claim_until=time.time() + lease_s, updated=time.time())
                ).rowcount
                == 1
            )

    def measurement_sent(
        self, search_id: str, device_id: str, variant: str, worker: str, job_id: str
    ) -> None:
        self._finish(search_id, device_id, variant, worker, state=SENT, fleet_job_id=job_id)

    def measurement_done(
        self,
        search_id: str,
        device_id: str,
        variant: str,
        worker: str,
        *,
        judgement: str | None,
        error: str | None = None,
    ) -> None:
        """The measurement ended: measured, with the host's ``judgement`` of the stored result
        (msgspec JSON), or failed with ``error``."""
        self._finish(
            search_id,
            device_id,
            variant,
            worker,
            state=MEASURED if error is None else FAILED,
            judgement=judgement,
            error=error,
        )

    def _finish(
        self, search_id: str, device_id: str, variant: str, worker: str, **values: Any
    ) -> None:
        with self.store.transaction() as session:
            session.execute(
                update(SearchMeasurementRow)
                .where(
                    SearchMeasurementRow.search_id == search_id,
                    SearchMeasurementRow.device_id == device_id,
                    SearchMeasurementRow.variant == variant,
                    SearchMeasurementRow.worker == worker,
                )
                .values(**values, updated=time.time())
            )

    def measurement(self, search_id: str, device_id: str, variant: str) -> MeasurementInfo | None:
        with self.store.read() as session:
            row = session.get(SearchMeasurementRow, (search_id, device_id, variant))
            return None if row is None else _columns(row, MeasurementInfo)

    def measurements(self, search_id: str, device_id: str | None = None) -> list[MeasurementInfo]:
        with self.store.read() as session:
            query = select(SearchMeasurementRow).where(SearchMeasurementRow.search_id == search_id)
            if device_id is not None:
                query = query.where(SearchMeasurementRow.device_id == device_id)
            query = query.order_by(SearchMeasurementRow.device_id, SearchMeasurementRow.created)
            return [_columns(row, MeasurementInfo) for row in session.scalars(query)]

    # -- graph features ------------------------------------------------------------------------
    def features(self, sha256: str, version: int) -> dict[str, Any] | None:
        with self.store.read() as session:
            row = session.get(ArtifactFeaturesRow, sha256)
            return None if row is None or row.version != version else dict(row.features)

    def put_features(self, sha256: str, version: int, features: dict[str, Any]) -> None:
        def write(session: Any) -> None:
            session.merge(ArtifactFeaturesRow(sha256=sha256, version=version, features=features))

        self.store.write_retrying(write)


__all__ = [
    "CLAIMED",
    "DECISIONS",
    "DECISION_FAILED",
    "DECISION_MEASURED",
    "DECISION_REUSED",
    "DECISION_SKIPPED",
    "FAILED",
    "MEASURED",
    "SENT",
    "Claim",
    "MeasurementInfo",
    "SearchInfo",
    "SearchStore",
    "TrialInfo",
    "Variant",
]
