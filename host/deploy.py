"""Deployment from the host: one device, or a staged rollout in waves with a failure threshold.

A deploy sends ``cmd.deploy`` to a device (shared.messages.DeployCmd); the agent fetches and
verifies the artifact, health-checks it in its isolated worker, switches its ``active`` model
atomically and answers with a :class:`shared.results.DeployResult` (``committed``, or ``rolled_back``
/ ``failed`` with nothing switched). Each device gets its own manifest: ``target_device`` is set and
``sequence`` is the next number of that device's deployment sequence (stored here, never reused),
signed when the fleet has a signing key, so an agent with a trust key refuses a replayed older one.

A rollout splits the devices into waves (``"1,25%,100%"``: one device, then a quarter of the fleet,
then the rest; a count or a percentage of all devices per wave, the last wave takes whatever is
left). Devices of a wave deploy in parallel. When more than ``max_failures`` devices of a wave fail,
the rollout aborts: the wave's devices that committed are rolled back (``cmd.rollback`` naming this
deploy, so a device that has moved on is left alone) and later waves never start.

Targets come from a campaign's stored selection (:func:`targets_from_campaign`) or are given
directly (:class:`DeployTarget`). Every device's outcome is stored (table ``deployments``).
"""

from __future__ import annotations

import logging
import math
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from sqlalchemy import JSON, Float, Integer, String, Text, select
from sqlalchemy.orm import Mapped, mapped_column

from host.artifacts import manifest_for_file
from host.errors import ConfigError, DeviceUnavailableError, HostError, JobTimeoutError
from host.store.models import Base
from shared.errors import EdgeTailorError, ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import DeployCmd, Response, RollbackCmd
from shared.results import DeployResult, from_data
from shared.signing import sign_manifest
from shared.topics import check_device_id

if TYPE_CHECKING:
    from host.fleet import Fleet, JobHandle
    from host.store import Store

logger = logging.getLogger(__name__)

DEFAULT_WAVES = "1,25%,100%"
# On top of the health check's own timeout: the transfer and the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
COMMITTED = "committed"
_WAVE_ITEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


class DeployError(HostError):
    """A deploy or rollout cannot start: unknown campaign, no selection, bad waves, ..."""


# --------------------------------------------------------------------------------------------------
# Storage: per-device sequence numbers and every device's deploy outcome.


class DeploySequenceRow(Base):
    __tablename__ = "deploy_sequences"

    device_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    sequence: Mapped[int] = mapped_column(Integer)


class DeploymentRow(Base):
    __tablename__ = "deployments"

    deploy_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    rollout_id: Mapped[str] = mapped_column(String(64), index=True)
    device_id: Mapped[str] = mapped_column(String(64), index=True)
    wave: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(Integer)
    outcome: Mapped[str] = mapped_column(String(32))
    active_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    error_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    health: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)


class DeployStore:
    """Deploy tables on top of a :class:`host.store.Store` (same engine and session style)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        Base.metadata.create_all(store.engine)

    def next_sequence(self, device_id: str) -> int:
        """A number above every one this device was given; time-based so that a host that lost
        its database still counts upwards."""
        with self.store._lock, self.store._session() as session:
            row = session.get(DeploySequenceRow, device_id)
            current = row.sequence if row is not None else 0
            sequence = max(current + 1, int(time.time() * 1000))
            if row is None:
                session.add(DeploySequenceRow(device_id=device_id, sequence=sequence))
            else:
                row.sequence = sequence
            return sequence

    def record(self, outcome: DeviceOutcome, rollout_id: str) -> None:
        now = time.time()
        with self.store._lock, self.store._session() as session:
            row = session.get(DeploymentRow, outcome.deploy_id)
            if row is None:
                row = DeploymentRow(deploy_id=outcome.deploy_id, created=now)
                session.add(row)
            row.rollout_id = rollout_id
            row.device_id = outcome.device_id
            row.wave = outcome.wave
            row.sha256 = outcome.sha256
            row.sequence = outcome.sequence
            row.outcome = outcome.outcome
            row.active_sha256 = outcome.active_sha256
            row.error_code = outcome.error_code
            row.detail = outcome.detail
            row.health = outcome.health
            row.updated = now

    def deployments(
        self, rollout_id: str | None = None, device_id: str | None = None
    ) -> list[dict[str, Any]]:
        with self.store._session() as session:
            query = select(DeploymentRow).order_by(DeploymentRow.created)
            if rollout_id is not None:
                query = query.where(DeploymentRow.rollout_id == rollout_id)
            if device_id is not None:
                query = query.where(DeploymentRow.device_id == device_id)
            return [
                {c.name: getattr(row, c.name) for c in DeploymentRow.__table__.columns}
                for row in session.scalars(query)
            ]


# --------------------------------------------------------------------------------------------------
# What to deploy, and what happened.


@dataclass(frozen=True)
class DeployTarget:
    """One device and the artifact it should run, with the bar its health check must clear."""

    device_id: str
    artifact: Path
    manifest: ArtifactManifest | None = None
    eval_path: Path | None = None
    eval_manifest: ArtifactManifest | None = None
    latency_budget_ms: float | None = None
    min_metric: float | None = None
    label: str = ""  # e.g. the campaign candidate id


@dataclass
class DeviceOutcome:
    device_id: str
    deploy_id: str
    wave: int
    sha256: str
    sequence: int
    outcome: str  # committed | rolled_back | failed | timeout | offline | wave_rolled_back
    active_sha256: str | None = None
    previous_sha256: str | None = None
    error_code: str | None = None
    detail: str = ""
    health: dict[str, Any] | None = None
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == COMMITTED


@dataclass
class RolloutResult:
    rollout_id: str
    waves: list[list[str]]
    outcomes: list[DeviceOutcome] = field(default_factory=list)
    aborted: bool = False
    aborted_wave: int | None = None
    skipped: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return not self.aborted and all(o.ok for o in self.outcomes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "ok": self.ok,
            "aborted": self.aborted,
            "aborted_wave": self.aborted_wave,
            "reason": self.reason,
            "waves": self.waves,
            "skipped": self.skipped,
            "devices": [asdict(o) for o in self.outcomes],
        }


ProgressFn = Callable[[str, dict[str, Any]], None]


# --------------------------------------------------------------------------------------------------
# Waves.


def parse_waves(text: str) -> list[tuple[float, bool]]:
    """``"1,25%,100%"`` -> [(1, False), (25, True), (100, True)]: a count or a percentage per wave."""
    items = [part for part in text.split(",") if part.strip()]
    if not items:
        raise ConfigError(f"--waves {text!r} is empty; give e.g. 1,25%,100%")
    waves = []
    for item in items:
        match = _WAVE_ITEM.match(item)
        if match is None:
            raise ConfigError(
                f"--waves item {item.strip()!r} is neither a device count (e.g. 1) nor a "
                "percentage of the fleet (e.g. 25%); give e.g. 1,25%,100%"
            )
        value, percent = float(match.group(1)), bool(match.group(2))
        if value <= 0 or (percent and value > 100) or (not percent and value != int(value)):
            raise ConfigError(
                f"--waves item {item.strip()!r} must be a whole count >= 1 or a percentage in "
                "(0, 100]; give e.g. 1,25%,100%"
            )
        waves.append((value, percent))
    return waves


def plan_waves(devices: Sequence[str], waves: Sequence[tuple[float, bool]]) -> list[list[str]]:
    """Split ``devices`` (in order) into waves; the last wave takes every device left over."""
    remaining = list(devices)
    plan: list[list[str]] = []
    for index, (value, percent) in enumerate(waves):
        if not remaining:
            break
        size = math.ceil(len(devices) * value / 100.0) if percent else int(value)
        if index == len(waves) - 1:
            size = len(remaining)
        plan.append(remaining[: max(1, size)])
        remaining = remaining[max(1, size) :]
    return plan


# --------------------------------------------------------------------------------------------------
# Deploying.


class Deployer:
    """Deploys through a connected :class:`host.fleet.Fleet`; outcomes go to its store, if any."""

    def __init__(
        self,
        fleet: Fleet,
        *,
        health_runs: int = 20,
        timeout_s: float = 300.0,
        device_timeout_s: float = 30.0,
        threads: int | None = None,
        progress: ProgressFn | None = None,
    ) -> None:
        self.fleet = fleet
        self.health_runs = health_runs
        self.timeout_s = timeout_s
        self.device_timeout_s = device_timeout_s
        self.threads = threads
        self._progress = progress
        self.dstore = DeployStore(fleet.store) if fleet.store is not None else None
        self._rollout_id: str | None = None

    def _emit(self, event: str, **data: Any) -> None:
        logger.info("%s: %s", event, data)
        if self._progress is not None:
            try:
                self._progress(event, data)
            except Exception:  # a display bug must not stop a rollout
                logger.exception("deploy progress callback failed")

    def _manifest_for(self, target: DeployTarget) -> ArtifactManifest:
        base = target.manifest or manifest_for_file(target.artifact)
        if self.dstore is not None:
            sequence = self.dstore.next_sequence(target.device_id)
        else:
            sequence = int(time.time() * 1000)
        manifest = msgspec.structs.replace(
            base, target_device=target.device_id, sequence=sequence, key_id=None, signature=None
        )
        if self.fleet.signing_key is not None:
            manifest = sign_manifest(manifest, self.fleet.signing_key)
        return manifest

    def send(self, target: DeployTarget, wave: int = 0) -> tuple[DeviceOutcome, JobHandle | None]:
        """Offer the artifact and send cmd.deploy; the outcome is final only when no handle comes back."""
        device = check_device_id(target.device_id)
        deploy_id = f"dep-{uuid.uuid4().hex[:20]}"
        manifest = self._manifest_for(target)
        outcome = DeviceOutcome(
            device_id=device, deploy_id=deploy_id, wave=wave, sha256=manifest.sha256,
            sequence=manifest.sequence, outcome="sent", label=target.label,
        )  # fmt: skip
        try:
            self.fleet.wait_for_device(device, self.device_timeout_s)
        except DeviceUnavailableError as exc:
            outcome.outcome, outcome.error_code, outcome.detail = "offline", "offline", str(exc)
            return outcome, None
        model = self.fleet.offer(target.artifact, manifest)
        eval_data = None
        if target.eval_path is not None:
            eval_data = self.fleet.offer(target.eval_path, target.eval_manifest)
        try:
            command = msgspec.convert(
                {
                    "deploy_id": deploy_id,
                    "model": msgspec.to_builtins(model),
                    "eval_data": msgspec.to_builtins(eval_data) if eval_data else None,
                    "chunk_size": self.fleet.chunk_size,
                    "threads": self.threads,
                    "latency_budget_ms": target.latency_budget_ms,
                    "min_metric": target.min_metric,
                    "health_runs": self.health_runs,
                    "timeout_s": self.timeout_s,
                },
                DeployCmd,
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid deploy settings for {device}: {exc}") from exc
        handle = self.fleet.send_command(
            device, command, job_id=deploy_id,
            on_progress=lambda _h, stage, _d: self._emit("stage", device=device, stage=stage),
        )  # fmt: skip
        self._emit("sent", device=device, deploy_id=deploy_id, sha256=manifest.sha256, wave=wave)
        return outcome, handle

    def collect(
        self, outcome: DeviceOutcome, handle: JobHandle | None, timeout: float
    ) -> DeviceOutcome:
        """Wait for the device's final answer and fill ``outcome`` from its DeployResult."""
        if handle is not None:
            try:
                _apply(outcome, handle.wait(timeout))
            except JobTimeoutError as exc:
                outcome.outcome, outcome.error_code, outcome.detail = "timeout", "timeout", str(exc)
        self._store(outcome)
        self._emit("outcome", device=outcome.device_id, outcome=outcome.outcome,
                   detail=outcome.detail)  # fmt: skip
        return outcome

    def _store(self, outcome: DeviceOutcome) -> None:
        if self.dstore is not None:
            self.dstore.record(outcome, self._rollout_id or outcome.deploy_id)

    def deploy_one(self, target: DeployTarget) -> DeviceOutcome:
        outcome, handle = self.send(target)
        return self.collect(outcome, handle, self.timeout_s + TRANSFER_ALLOWANCE_S)

    def rollback(
        self,
        device_id: str,
        *,
        deploy_id: str | None = None,
        reason: str = "",
        timeout: float = 60.0,
    ) -> DeviceOutcome:
        """Restore the device's previous model (only if ``deploy_id`` is still active, when given)."""
        device = check_device_id(device_id)
        self.fleet.wait_for_device(device, self.device_timeout_s)
        handle = self.fleet.send_command(
            device, RollbackCmd(deploy_id=deploy_id, reason=reason[:4000])
        )
        outcome = DeviceOutcome(
            device_id=device, deploy_id=deploy_id or handle.job_id, wave=0, sha256="",
            sequence=0, outcome="sent",
        )  # fmt: skip
        try:
            _apply(outcome, handle.wait(timeout))
        except JobTimeoutError as exc:
            outcome.outcome, outcome.error_code, outcome.detail = "timeout", "timeout", str(exc)
        return outcome

    def rollout(
        self,
        targets: Sequence[DeployTarget],
        waves: str | Sequence[tuple[float, bool]] = DEFAULT_WAVES,
        max_failures: int = 0,
    ) -> RolloutResult:
        """Deploy wave by wave; abort and roll back the wave when its failures pass ``max_failures``."""
        if not targets:
            raise DeployError("nothing to deploy: no target devices")
        if max_failures < 0:
            raise ConfigError(f"--max-failures must be >= 0, not {max_failures}")
        by_device = {t.device_id: t for t in targets}
        if len(by_device) != len(targets):
            raise ConfigError("a device appears twice among the deploy targets")
        spec = parse_waves(waves) if isinstance(waves, str) else list(waves)
        plan = plan_waves([t.device_id for t in targets], spec)
        result = RolloutResult(rollout_id=f"roll-{uuid.uuid4().hex[:16]}", waves=plan)
        self._rollout_id = result.rollout_id
        for index, wave in enumerate(plan, start=1):
            self._emit("wave", wave=index, devices=wave)
            sent = [self._send_in_wave(by_device[device], index) for device in wave]
            deadline = time.monotonic() + self.timeout_s + TRANSFER_ALLOWANCE_S
            outcomes = [
                self.collect(outcome, handle, max(1.0, deadline - time.monotonic()))
                for outcome, handle in sent
            ]
            result.outcomes.extend(outcomes)
            failures = [o for o in outcomes if not o.ok]
            if len(failures) > max_failures:
                result.aborted, result.aborted_wave = True, index
                result.reason = (
                    f"wave {index}: {len(failures)} of {len(wave)} devices failed "
                    f"({', '.join(f'{o.device_id}: {o.outcome}' for o in failures)}), more than "
                    f"--max-failures {max_failures}; the wave was rolled back and later waves skipped"
                )
                self._emit("abort", wave=index, reason=result.reason)
                self._roll_back_wave(outcomes)
                result.skipped = [d for later in plan[index:] for d in later]
                break
        return result

    def _send_in_wave(
        self, target: DeployTarget, wave: int
    ) -> tuple[DeviceOutcome, JobHandle | None]:
        """:meth:`send`, with a refusal turned into this device's failure.

        Earlier devices of the wave already have their command: an exception escaping here would
        lose their handles, so their outcomes would never be collected nor their wave rolled back.
        """
        try:
            return self.send(target, wave)
        except EdgeTailorError as exc:
            logger.warning("deploy to %s not sent: %s", target.device_id, exc)
            outcome = DeviceOutcome(
                device_id=target.device_id, deploy_id=f"dep-{uuid.uuid4().hex[:20]}", wave=wave,
                sha256=target.manifest.sha256 if target.manifest else "", sequence=0,
                outcome="failed", error_code="not_sent", detail=str(exc), label=target.label,
            )  # fmt: skip
            return outcome, None

    def _roll_back_wave(self, outcomes: list[DeviceOutcome]) -> None:
        # A device that timed out may still have committed: the named rollback is refused by a
        # device on which this deploy is not active, so asking costs nothing.
        for outcome in outcomes:
            if outcome.outcome not in (COMMITTED, "timeout"):
                continue
            try:
                undone = self.rollback(
                    outcome.device_id, deploy_id=outcome.deploy_id,
                    reason=f"rollout aborted in wave {outcome.wave}",
                )  # fmt: skip
            except DeviceUnavailableError as exc:
                outcome.detail = f"wave rollback impossible: {exc}"
                self._store(outcome)
                continue
            if undone.outcome == "restored":
                outcome.outcome = "wave_rolled_back"
                outcome.active_sha256 = undone.active_sha256
                outcome.previous_sha256 = undone.previous_sha256
                outcome.detail = "committed, then rolled back with its wave"
            else:
                outcome.detail = f"wave rollback: {undone.outcome} ({undone.detail})"
            self._store(outcome)
            self._emit("rolled_back", device=outcome.device_id, outcome=outcome.outcome)


def _apply(outcome: DeviceOutcome, response: Response) -> None:
    data = response.data or {}
    try:
        result = from_data(data, DeployResult) if "outcome" in data else None
    except ValidationError:
        result = None
    if result is not None:
        outcome.outcome = result.outcome
        outcome.active_sha256 = result.active_sha256
        outcome.previous_sha256 = result.previous_sha256
        outcome.health = msgspec.to_builtins(result.health) if result.health else None
        outcome.detail = result.detail
    else:
        outcome.outcome = COMMITTED if response.status == "ok" else "failed"
    if response.error is not None:
        outcome.error_code = response.error.code
        outcome.detail = outcome.detail or response.error.message


# --------------------------------------------------------------------------------------------------
# Targets from a campaign.


def _latency_bound(constraints: Sequence[str]) -> float | None:
    """The tightest ``latency_p90_ms<=X`` (or ``<``) bound among a campaign's constraints."""
    bounds = []
    for text in constraints:
        match = re.match(r"^\s*latency_p90_ms\s*<=?\s*([0-9.eE+-]+)\s*$", text)
        if match:
            try:
                bounds.append(float(match.group(1)))
            except ValueError:
                continue
    return min(bounds) if bounds else None


def targets_from_selection(
    selection: Mapping[str, Mapping[str, Any]],
    candidates: Sequence[Mapping[str, Any]],
    *,
    eval_path: Path | None = None,
    constraints: Sequence[str] = (),
    devices: Sequence[str] | None = None,
    latency_budget_ms: float | None = None,
    min_metric: float | None = None,
) -> list[DeployTarget]:
    """One target per selected device: its chosen candidate's file, the campaign's eval set.

    The latency budget is ``latency_budget_ms`` when given, else the campaign's p90 constraint.
    """
    by_id = {str(c.get("id") or c.get("candidate_id")): c for c in candidates}
    budget = latency_budget_ms if latency_budget_ms is not None else _latency_bound(constraints)
    wanted = list(devices) if devices else sorted(selection)
    targets = []
    for device in wanted:
        choice = selection.get(device)
        if choice is None:
            raise DeployError(
                f"device {device!r} has no selection in this campaign; selected devices: "
                f"{', '.join(sorted(selection)) or 'none'}"
            )
        candidate_id = choice.get("candidate")
        if not candidate_id:
            raise DeployError(
                f"no candidate met the constraints on {device} ({choice.get('reason', '')}); "
                "relax the constraints or leave the device out with --devices"
            )
        candidate = by_id.get(str(candidate_id))
        path = Path(candidate["path"]) if candidate and candidate.get("path") else None
        if path is None or not path.is_file():
            raise DeployError(
                f"the artifact of candidate {candidate_id} for {device} is missing ({path}); "
                "resume the campaign to rebuild it"
            )
        targets.append(DeployTarget(
            device_id=device, artifact=path,
            eval_path=eval_path if eval_path is not None and eval_path.is_file() else None,
            latency_budget_ms=budget, min_metric=min_metric, label=str(candidate_id),
        ))  # fmt: skip
    return targets


def targets_from_campaign(
    store: Store,
    campaign_id: str,
    *,
    devices: Sequence[str] | None = None,
    latency_budget_ms: float | None = None,
    min_metric: float | None = None,
) -> list[DeployTarget]:
    """Targets from the selection a finished campaign stored in the database."""
    from host.store.campaigns import CampaignStore

    cstore = CampaignStore(store)
    campaign = cstore.get_campaign(campaign_id)
    if campaign is None:
        known = ", ".join(c.campaign_id for c in cstore.list_campaigns()[-5:]) or "none"
        raise DeployError(
            f"no campaign {campaign_id!r} in the database {store._safe_url()}; recent ones: "
            f"{known}; pass the same --db the campaign used"
        )
    if not campaign.selection:
        raise DeployError(
            f"campaign {campaign_id} has no selection yet (status {campaign.status}); finish it "
            f"with `edgetailor campaign --resume {campaign_id}` first"
        )
    candidates = [
        {"id": c.candidate_id, "path": c.path, "sha256": c.sha256}
        for c in cstore.candidates(campaign_id)
    ]
    work_dir = campaign.state.get("work_dir")
    return targets_from_selection(
        campaign.selection, candidates,
        eval_path=Path(work_dir) / "eval.npz" if work_dir else None,
        constraints=campaign.spec.get("constraints") or (), devices=devices,
        latency_budget_ms=latency_budget_ms, min_metric=min_metric,
    )  # fmt: skip


def deploy_selection(
    outcome: Mapping[str, Any],
    *,
    fleet: Fleet,
    store: Store | None = None,
    waves: str = "100%",
    max_failures: int = 0,
) -> dict[str, str]:
    """Deploy each device's choice from a campaign outcome document (used by the demo)."""
    campaign = outcome.get("campaign") or {}
    selection = {d: s for d, s in (outcome.get("selection") or {}).items() if s.get("candidate")}
    if not selection:
        return {}
    work_dir = campaign.get("work_dir")
    targets = targets_from_selection(
        selection, outcome.get("candidates") or [],
        eval_path=Path(work_dir) / "eval.npz" if work_dir else None,
        constraints=campaign.get("constraints") or (),
    )  # fmt: skip
    result = Deployer(fleet, health_runs=10, timeout_s=120.0).rollout(targets, waves, max_failures)
    return {o.device_id: f"{o.outcome} ({o.label})" for o in result.outcomes} | {
        device: "skipped (rollout aborted)" for device in result.skipped
    }


__all__ = [
    "DEFAULT_WAVES",
    "DeployError",
    "DeployStore",
    "DeployTarget",
    "Deployer",
    "DeviceOutcome",
    "RolloutResult",
    "deploy_selection",
    "parse_waves",
    "plan_waves",
    "targets_from_campaign",
    "targets_from_selection",
]
