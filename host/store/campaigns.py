"""Campaign tables and their repository: campaigns, candidates, (candidate, device) jobs, and which
artifacts each device already holds.

The tables live on the same ``Base`` as the fleet's, in the same database, so that a campaign's job
rows can point at the fleet's ``jobs``/``results`` rows by job id. Everything a host restart needs to
resume a campaign is here: the spec, every candidate with its file, and every job's state. Reads
return plain dataclasses, never live ORM objects.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict
from sqlalchemy import JSON, BigInteger, Float, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from host.store.models import Base
from host.store.repository import Store, _columns

logger = logging.getLogger(__name__)

# Job states. "pending" has not been sent (or must be sent again), "running" was sent under
# ``fleet_job_id``; the others are final.
JOB_PENDING = "pending"
JOB_RUNNING = "running"
JOB_OK = "ok"
JOB_FAILED = "failed"
JOB_OFFLINE = "offline"
FINAL_JOB_STATES = (JOB_OK, JOB_FAILED, JOB_OFFLINE)


class CampaignState(BaseModel):
    """What a campaign learned while it ran, stored as JSON beside its spec and read back as this
    type: the work folder, the devices it measures on, the baseline and its metric, the task, the
    eval set, and the error that ended its last run."""

    # A row written by a later version may hold more; this version reads what it knows.
    model_config = ConfigDict(extra="ignore", frozen=True)

    work_dir: str | None = None
    error: str | None = None
    devices: list[str] = []
    baseline_metric: float | None = None  # the deciding metric's score (the user metric's if any)
    metric: str | None = None  # the deciding metric's name
    device_metric: str | None = None  # the metric the boards report
    device_baseline_metric: float | None = None
    model_name: str | None = None
    task: str | None = None
    task_note: str | None = None
    eval_samples: int | None = None
    eval_warnings: list[str] = []
    seconds_last_run: float | None = None

    def updated(self, changes: Mapping[str, Any]) -> CampaignState:
        unknown = sorted(set(changes) - set(CampaignState.model_fields))
        if unknown:
            raise ValueError(f"campaign state has no field(s) {', '.join(unknown)}")
        return CampaignState.model_validate({**self.model_dump(), **changes})


class CampaignRow(Base):
    __tablename__ = "campaigns"

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(
        String(16)
    )  # created | compressing | measuring | done | failed | cancelled
    state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)  # a CampaignState
    selection: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class CandidateRow(Base):
    __tablename__ = "campaign_candidates"

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    recipe_name: Mapped[str] = mapped_column(String(128))
    recipe: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    format: Mapped[str] = mapped_column(String(16))
    precision: Mapped[str] = mapped_column(String(32), default="")
    status: Mapped[str] = mapped_column(String(16))  # ok | screened_out | failed
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    path: Mapped[str | None] = mapped_column(Text, nullable=True)
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    host_metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created: Mapped[float] = mapped_column(Float)


class CampaignJobRow(Base):
    __tablename__ = "campaign_jobs"

    campaign_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    candidate_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    position: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(BigInteger, default=0)
    fleet_job_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    job_ids: Mapped[list[str]] = mapped_column(JSON, default=list)  # every job id ever sent
    # How the host judged the result of fleet_job_id (host.campaign.quality.Judgement, msgspec
    # JSON); the result itself is the agent's BenchmarkResult stored with that command.
    judgement: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    updated: Mapped[float] = mapped_column(Float)


class DeviceArtifactRow(Base):
    """An artifact a device reported holding (in a benchmark's TransferStats)."""

    __tablename__ = "device_artifacts"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    seen: Mapped[float] = mapped_column(Float)


@dataclass(frozen=True)
class CampaignInfo:
    campaign_id: str
    spec: dict[str, Any]  # as stored: host.campaign.CampaignSpec.from_stored reads it
    status: str
    state: CampaignState
    selection: dict[str, Any] | None
    created: float
    updated: float


def _campaign_info(row: CampaignRow) -> CampaignInfo:
    return CampaignInfo(
        campaign_id=row.campaign_id, spec=row.spec, status=row.status,
        state=CampaignState.model_validate(row.state or {}), selection=row.selection,
        created=row.created, updated=row.updated,
    )  # fmt: skip


@dataclass(frozen=True)
class CandidateInfo:
    campaign_id: str
    candidate_id: str
    position: int
    recipe_name: str
    recipe: list[dict[str, Any]]
    format: str
    precision: str
    status: str
    reason: str | None
    sha256: str | None
    path: str | None
    size_bytes: int
    host_metrics: dict[str, Any]
    created: float


@dataclass(frozen=True)
class CampaignJobInfo:
    campaign_id: str
    candidate_id: str
    device_id: str
    position: int
    status: str
    attempts: int
    fleet_job_id: str | None
    job_ids: list[str]
    judgement: str | None
    error: str | None
    updated: float


class CampaignStore:
    """Campaign state on top of a :class:`host.store.Store` (same engine, same transactions style)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- campaigns -----------------------------------------------------------------------------
    def create_campaign(self, campaign_id: str, spec: dict[str, Any]) -> CampaignInfo:
        now = time.time()
        with self.store.transaction() as session:
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                row = CampaignRow(
                    campaign_id=campaign_id,
                    spec=spec,
                    status="created",
                    state={},
                    selection=None,
                    created=now,
                    updated=now,
                )
                session.add(row)
            return _campaign_info(row)

    def get_campaign(self, campaign_id: str) -> CampaignInfo | None:
        with self.store.read() as session:
            row = session.get(CampaignRow, campaign_id)
            return None if row is None else _campaign_info(row)

    def list_campaigns(self) -> list[CampaignInfo]:
        with self.store.read() as session:
            rows = session.scalars(select(CampaignRow).order_by(CampaignRow.created))
            return [_campaign_info(row) for row in rows]

    def update_campaign(
        self,
        campaign_id: str,
        *,
        status: str | None = None,
        state: Mapping[str, Any] | None = None,
        selection: dict[str, Any] | None = None,
    ) -> None:
        """Set the status, the selection, and the named fields of the :class:`CampaignState`."""
        with self.store.transaction() as session:
            row = session.get(CampaignRow, campaign_id)
            if row is None:
                return
            if status is not None:
                row.status = status
            if state is not None:
                current = CampaignState.model_validate(row.state or {})
                row.state = current.updated(state).model_dump(mode="json")
            if selection is not None:
                row.selection = selection
            row.updated = time.time()

    # -- candidates ----------------------------------------------------------------------------
    def put_candidate(self, info: CandidateInfo) -> None:
        with self.store.transaction() as session:
            session.merge(
                CandidateRow(**{k: getattr(info, k) for k in CandidateInfo.__dataclass_fields__})
            )

    def set_candidate_status(
        self, campaign_id: str, candidate_id: str, status: str, reason: str | None
    ) -> None:
        with self.store.transaction() as session:
            row = session.get(CandidateRow, (campaign_id, candidate_id))
            if row is not None:
                row.status = status
                row.reason = reason

    def candidates(self, campaign_id: str) -> list[CandidateInfo]:
        with self.store.read() as session:
            query = (
                select(CandidateRow)
                .where(CandidateRow.campaign_id == campaign_id)
                .order_by(CandidateRow.position)
            )
            return [_columns(row, CandidateInfo) for row in session.scalars(query)]

    # -- jobs ----------------------------------------------------------------------------------
    def ensure_job(
        self, campaign_id: str, candidate_id: str, device_id: str, position: int
    ) -> None:
        """Create the (candidate, device) job as pending unless it exists (resume keeps its state)."""
        with self.store.transaction() as session:
            if session.get(CampaignJobRow, (campaign_id, candidate_id, device_id)) is None:
                session.add(
                    CampaignJobRow(
                        campaign_id=campaign_id,
                        candidate_id=candidate_id,
                        device_id=device_id,
                        position=position,
                        status=JOB_PENDING,
                        attempts=0,
                        job_ids=[],
                        updated=time.time(),
                    )
                )

    def jobs(self, campaign_id: str, device_id: str | None = None) -> list[CampaignJobInfo]:
        with self.store.read() as session:
            query = select(CampaignJobRow).where(CampaignJobRow.campaign_id == campaign_id)
            if device_id is not None:
                query = query.where(CampaignJobRow.device_id == device_id)
            query = query.order_by(CampaignJobRow.device_id, CampaignJobRow.position)
            return [_columns(row, CampaignJobInfo) for row in session.scalars(query)]

    def job_sent(
        self, campaign_id: str, candidate_id: str, device_id: str, fleet_job_id: str
    ) -> None:
        with self.store.transaction() as session:
            row = session.get(CampaignJobRow, (campaign_id, candidate_id, device_id))
            if row is None:
                return
            row.status = JOB_RUNNING
            row.attempts += 1
            row.fleet_job_id = fleet_job_id
            row.job_ids = [*row.job_ids, fleet_job_id]
            row.updated = time.time()

    def job_finished(
        self,
        campaign_id: str,
        candidate_id: str,
        device_id: str,
        status: str,
        *,
        judgement: str | None = None,
        error: str | None = None,
    ) -> None:
        with self.store.transaction() as session:
            job = session.get(CampaignJobRow, (campaign_id, candidate_id, device_id))
            if job is None:
                return
            job.status = status
            job.judgement = judgement
            job.error = error
            job.updated = time.time()

    def job_retry(self, campaign_id: str, candidate_id: str, device_id: str, error: str) -> None:
        """Back to pending after a failed attempt; the attempt count stays."""
        with self.store.transaction() as session:
            job = session.get(CampaignJobRow, (campaign_id, candidate_id, device_id))
            if job is None:
                return
            job.status = JOB_PENDING
            job.fleet_job_id = None
            job.error = error
            job.updated = time.time()

    # -- what devices hold ---------------------------------------------------------------------
    def mark_held(self, device_id: str, sha256s: list[str]) -> None:
        now = time.time()
        with self.store.transaction() as session:
            for sha in sha256s:
                session.merge(DeviceArtifactRow(device_id=device_id, sha256=sha, seen=now))

    def held(self, device_id: str) -> set[str]:
        with self.store.read() as session:
            query = select(DeviceArtifactRow.sha256).where(DeviceArtifactRow.device_id == device_id)
            return set(session.scalars(query))


__all__ = [
    "FINAL_JOB_STATES",
    "JOB_FAILED",
    "JOB_OFFLINE",
    "JOB_OK",
    "JOB_PENDING",
    "JOB_RUNNING",
    "CampaignInfo",
    "CampaignJobInfo",
    "CampaignState",
    "CampaignStore",
    "CandidateInfo",
]
