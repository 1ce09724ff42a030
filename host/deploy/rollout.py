"""Creating rollouts (desired state), and driving one inline for the one-shot CLI commands.

:func:`create_rollout` turns targets and a wave spec into stored rows; nothing is sent here. The
service's driver loop, or :class:`Deployer` for ``edgetailor deploy`` without a service, then
drives them (host.deploy.driver). :class:`RolloutResult` is what the CLI prints: the stored rows
read back, with targets still waiting on an offline device reported as ``offline``.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from host.artifacts import manifest_for_file
from host.commands.repository import CommandInfo
from host.deploy.driver import DEFAULT_OFFLINE_GRACE_S, DeploymentDriver, deploy_result
from host.deploy.targets import DeployError, DeployTarget, targets_from_selection
from host.deploy.waves import DEFAULT_WAVES, parse_waves, plan_waves
from host.errors import ConfigError, JobTimeoutError
from host.store.deployments import (
    COMMITTED,
    PENDING,
    REVERTED,
    SENT,
    SKIPPED,
    SUPERSEDED,
    WAITING,
    DeploymentStore,
    NewTarget,
    RolloutInfo,
    TargetInfo,
)
from shared.errors import EdgeTailorError
from shared.messages import RollbackCmd
from shared.topics import check_device_id

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

logger = logging.getLogger(__name__)

ProgressFn = Callable[[str, dict[str, Any]], None]


def new_rollout_id() -> str:
    return f"roll-{uuid.uuid4().hex[:16]}"


def new_deploy_id() -> str:
    return f"dep-{uuid.uuid4().hex[:20]}"


def create_rollout(
    store: Store,
    targets: Sequence[DeployTarget],
    waves: str | Sequence[tuple[float, bool]] = DEFAULT_WAVES,
    *,
    max_failures: int = 0,
    health_runs: int = 20,
    timeout_s: float = 300.0,
    threads: int | None = None,
    offline_grace_s: float = DEFAULT_OFFLINE_GRACE_S,
    label: str = "",
    rollout_id: str | None = None,
) -> RolloutInfo:
    """Store what each device should run and in which wave; the drivers do the rest."""
    if not targets:
        raise DeployError("nothing to deploy: no target devices")
    if max_failures < 0:
        raise ConfigError(f"--max-failures must be >= 0, not {max_failures}")
    if health_runs < 1:
        raise ConfigError(f"--health-runs must be >= 1, not {health_runs}")
    if timeout_s <= 0:
        raise ConfigError(f"--timeout must be > 0 s, not {timeout_s}")
    by_device = {check_device_id(t.device_id): t for t in targets}
    if len(by_device) != len(targets):
        raise ConfigError("a device appears twice among the deploy targets")
    spec = parse_waves(waves) if isinstance(waves, str) else list(waves)
    plan = plan_waves([t.device_id for t in targets], spec)
    rows = []
    for wave_index, wave in enumerate(plan, start=1):
        for device in wave:
            target = by_device[device]
            rows.append(_new_target(target, wave_index))
    settings = {
        "health_runs": health_runs,
        "timeout_s": timeout_s,
        "threads": threads,
        "offline_grace_s": offline_grace_s,
    }
    return DeploymentStore(store).create_rollout(
        rollout_id or new_rollout_id(), plan, rows, max_failures=max_failures,
        settings=settings, label=label,
    )  # fmt: skip


def _new_target(target: DeployTarget, wave: int) -> NewTarget:
    failed = None
    manifest = target.manifest
    if manifest is None:
        try:
            manifest = manifest_for_file(target.artifact)
        except EdgeTailorError as exc:
            failed = str(exc)
    eval_path = target.eval_path
    if eval_path is not None and failed is None and not Path(eval_path).is_file():
        failed = f"the eval set {eval_path} of the health check is missing"
    return NewTarget(
        deploy_id=new_deploy_id(), device_id=target.device_id, wave=wave,
        sha256=manifest.sha256 if manifest is not None else "",
        artifact_path=str(Path(target.artifact).resolve()) if target.artifact else None,
        manifest=msgspec.to_builtins(manifest) if manifest is not None else None,
        eval_path=str(Path(eval_path).resolve()) if eval_path is not None else None,
        latency_budget_ms=target.latency_budget_ms, min_metric=target.min_metric,
        label=target.label, runtime=target.runtime, threads=target.threads,
        failed_detail=failed,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------------
# What the CLI prints.


@dataclass
class DeviceOutcome:
    device_id: str
    deploy_id: str
    wave: int
    sha256: str
    sequence: int
    # committed | rolled_back | failed | timeout | offline | wave_rolled_back | reverted | ...
    outcome: str
    active_sha256: str | None = None
    previous_sha256: str | None = None
    error_code: str | None = None
    detail: str = ""
    health: dict[str, Any] | None = None
    label: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == COMMITTED

    @classmethod
    def from_target(cls, target: TargetInfo, *, offline: bool = False) -> DeviceOutcome:
        outcome, detail = target.state, target.detail
        if target.state in (PENDING, SENT, WAITING):
            outcome = "offline" if offline else target.state
            if offline:
                detail = (
                    "the device is offline; its deploy is kept and sent when it comes back "
                    "(by `edgetailor serve`, or the next `edgetailor deploy`)"
                )
        return cls(
            device_id=target.device_id, deploy_id=target.deploy_id, wave=target.wave,
            sha256=target.sha256, sequence=target.sequence or 0, outcome=outcome,
            active_sha256=target.active_sha256, previous_sha256=target.previous_sha256,
            error_code=target.error_code or ("offline" if offline else None), detail=detail,
            health=target.health, label=target.label,
        )  # fmt: skip


@dataclass
class RolloutResult:
    rollout_id: str
    waves: list[list[str]]
    outcomes: list[DeviceOutcome] = field(default_factory=list)
    aborted: bool = False
    aborted_wave: int | None = None
    skipped: list[str] = field(default_factory=list)
    reason: str = ""
    status: str = ""

    @property
    def ok(self) -> bool:
        return not self.aborted and all(o.ok for o in self.outcomes)

    @classmethod
    def read(
        cls, dstore: DeploymentStore, rollout_id: str, online: Callable[[str], bool]
    ) -> RolloutResult:
        rollout = dstore.get_rollout(rollout_id)
        if rollout is None:
            raise DeployError(f"no rollout {rollout_id!r} in the database")
        targets = dstore.targets(rollout_id)
        return cls(
            rollout_id=rollout_id,
            waves=rollout.waves,
            outcomes=[
                DeviceOutcome.from_target(t, offline=not online(t.device_id))
                for t in targets
                if t.state not in (SKIPPED, SUPERSEDED, WAITING)
            ],
            aborted=rollout.status == "aborted",
            aborted_wave=rollout.aborted_wave,
            skipped=[t.device_id for t in targets if t.state in (SKIPPED, SUPERSEDED, WAITING)],
            reason=rollout.reason,
            status=rollout.status,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "rollout_id": self.rollout_id,
            "ok": self.ok,
            "status": self.status,
            "aborted": self.aborted,
            "aborted_wave": self.aborted_wave,
            "reason": self.reason,
            "waves": self.waves,
            "skipped": self.skipped,
            "devices": [asdict(o) for o in self.outcomes],
        }


# --------------------------------------------------------------------------------------------------
# Inline: the one-shot commands.


class Deployer:
    """Deploys through a connected :class:`host.fleet.Fleet` and its store, without a service.

    A rollout is written as desired state first, then driven here until every device answered or
    what is left waits on devices offline for ``device_timeout_s``; a running ``edgetailor serve``
    on the same database finishes those when the devices come back.
    """

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
        if fleet.store is None:
            raise ConfigError(
                "deploys are desired state kept in the database: give the Fleet a store "
                "(--db, or EDGETAILOR_DB)"
            )
        self.fleet = fleet
        self.store: Store = fleet.store
        self.health_runs = health_runs
        self.timeout_s = timeout_s
        self.device_timeout_s = device_timeout_s
        self.threads = threads
        self.dstore = DeploymentStore(self.store)
        self.driver = DeploymentDriver(self.store, fleet, on_event=progress)

    def rollout(
        self,
        targets: Sequence[DeployTarget],
        waves: str | Sequence[tuple[float, bool]] = DEFAULT_WAVES,
        max_failures: int = 0,
        *,
        label: str = "",
    ) -> RolloutResult:
        """Store the rollout, then drive it wave by wave (see host.deploy.driver)."""
        rollout = create_rollout(
            self.store, targets, waves, max_failures=max_failures, health_runs=self.health_runs,
            timeout_s=self.timeout_s, threads=self.threads,
            offline_grace_s=self.device_timeout_s, label=label,
        )  # fmt: skip
        self.driver._emit("wave", wave=1, devices=rollout.waves[0], rollout=rollout.rollout_id)
        self.driver.run(rollout.rollout_id, grace_s=self.device_timeout_s)
        return RolloutResult.read(self.dstore, rollout.rollout_id, self.driver.online)

    def deploy_one(self, target: DeployTarget) -> DeviceOutcome:
        result = self.rollout([target], "100%")
        return result.outcomes[0] if result.outcomes else DeviceOutcome(
            device_id=target.device_id, deploy_id="", wave=1, sha256="", sequence=0,
            outcome="skipped", detail=result.reason,
        )  # fmt: skip

    def rollback(
        self,
        device_id: str,
        *,
        deploy_id: str | None = None,
        reason: str = "",
        timeout: float = 60.0,
    ) -> DeviceOutcome:
        """Restore the device's previous model (only if ``deploy_id`` is still active, when given).

        A restored deploy is recorded as ``reverted``, so the device's desired state is what it
        runs again rather than the model it was taken off.
        """
        device = check_device_id(device_id)
        self.fleet.wait_for_device(device, self.device_timeout_s)
        commands = self.fleet.commands
        sent = commands.send(device, RollbackCmd(deploy_id=deploy_id, reason=reason[:4000]))
        outcome = DeviceOutcome(
            device_id=device, deploy_id=deploy_id or sent.command_id, wave=0, sha256="",
            sequence=0, outcome="sent",
        )  # fmt: skip
        try:
            _apply(outcome, commands.wait(sent.command_id, timeout))
        except JobTimeoutError as exc:
            # A rollback that would run much later, unasked, is worse than none: given up.
            commands.cancel(sent.command_id)
            outcome.outcome, outcome.error_code, outcome.detail = "timeout", "timeout", str(exc)
        if outcome.outcome == "restored":
            record_manual_rollback(self.dstore, device, deploy_id, reason)
        return outcome


def record_manual_rollback(
    dstore: DeploymentStore, device_id: str, deploy_id: str | None, reason: str
) -> str | None:
    """Mark the deploy a manual rollback undid (the named one, else the device's newest
    committed one) as reverted; returns its deploy id."""
    committed = [
        t
        for t in dstore.targets(device_id=device_id, states=(COMMITTED,))
        if deploy_id is None or t.deploy_id == deploy_id
    ]
    if not committed:
        return None
    newest = committed[-1]
    dstore.update_target(
        newest.deploy_id, expect_states=(COMMITTED,), state=REVERTED,
        detail=f"rolled back on request{': ' + reason if reason else ''}", finished_at=time.time(),
    )  # fmt: skip
    return newest.deploy_id


def _apply(outcome: DeviceOutcome, info: CommandInfo) -> None:
    result = deploy_result(info)
    if result is not None:
        outcome.outcome = result.outcome
        outcome.active_sha256 = result.active_sha256
        outcome.previous_sha256 = result.previous_sha256
        outcome.health = msgspec.to_builtins(result.health) if result.health else None
        outcome.detail = result.detail
    else:
        outcome.outcome = COMMITTED if info.state == "answered" else "failed"
    if info.error_code is not None:
        outcome.error_code = info.error_code
        outcome.detail = outcome.detail or info.error_message or ""


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
