"""The deployment driver: moves every open rollout's targets toward what they should run.

Each :meth:`DeploymentDriver.step` reads the database (the source of truth), and for each open
rollout:

1. sends the pending targets whose device is online: claim the row, give it the device's next
   deploy sequence and record its deploy command (host.commands) in one transaction. The command
   driver publishes it, signed, and publishes it again when the device comes back or after a
   restart; this driver publishes nothing itself;
2. reads the answers the command pipeline stored for sent targets (the command's typed
   DeployResult), whichever host process received them; gives up on a device that stays online
   without answering for ``timeout_s`` plus a transfer allowance (time offline does not count);
3. judges the current wave: more than ``max_failures`` failed devices abort the rollout (the
   wave's committed devices are rolled back by name, later waves skipped); a wave whose devices
   have all answered, or are offline past ``offline_grace_s``, lets the next wave start. A device
   that was offline gets its deploy whenever it comes back, long after its wave moved on.

Several processes may run drivers on one database: every transition is a conditional update on
the row's state (see host.store.deployments), so exactly one of them records each command.
"""

from __future__ import annotations

import functools
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from host.commands.models import ANSWERED, CANCELLED, EXPIRED
from host.commands.repository import CommandInfo, CommandStore
from host.errors import ConfigError
from host.store.deployments import (
    ABORTED,
    ACTIVE,
    COMMITTED,
    DONE,
    FAILED,
    FAILED_STATES,
    PENDING,
    RB_PENDING,
    RB_REFUSED,
    RB_RESTORED,
    RB_SENT,
    REVERTED,
    ROLLED_BACK_ROLLOUT,
    SENT,
    TIMEOUT,
    WAVE_ROLLED_BACK,
    DeploymentStore,
    RolloutInfo,
    TargetInfo,
)
from shared.errors import EdgeTailorError, ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import DeployCmd, RollbackCmd
from shared.results import DeployResult

if TYPE_CHECKING:
    from host.fleet.devices import DeviceRegistry
    from host.store import Store

logger = logging.getLogger(__name__)

# On top of the health check's own timeout: the transfer and the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
CLAIM_LEASE_S = 30.0
DEFAULT_OFFLINE_GRACE_S = 30.0

EventFn = Callable[[str, dict[str, Any]], None]


class CommandsPort(Protocol):
    def wake(self) -> None: ...


class FleetPort(Protocol):
    """What the driver needs of host.fleet.Fleet (tests give it a scripted fleet)."""

    registry: DeviceRegistry
    chunk_size: int

    @property
    def commands(self) -> CommandsPort: ...

    def offer(
        self, path: Any, manifest: ArtifactManifest | None = None, *, verify: bool = True
    ) -> ArtifactManifest: ...


def default_owner() -> str:
    """Who holds a claim: host name, process id and a random part (two drivers in one process)."""
    return f"{socket.gethostname()[:64]}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def deploy_result(info: CommandInfo) -> DeployResult | None:
    """The DeployResult a device answered a deploy or rollback with (None: it sent none)."""
    try:
        return info.result_as(DeployResult)
    except ValidationError:
        return None


def outcome_from_command(info: CommandInfo) -> dict[str, Any]:
    """The target columns a deploy command's final state sets."""
    changes: dict[str, Any] = {"error_code": info.error_code}
    parsed = deploy_result(info)
    if parsed is not None:
        state = parsed.outcome if parsed.outcome in (COMMITTED, "rolled_back") else FAILED
        changes.update(
            state=state,
            active_sha256=parsed.active_sha256,
            previous_sha256=parsed.previous_sha256,
            health=msgspec.to_builtins(parsed.health) if parsed.health else None,
            detail=parsed.detail or (info.error_message or ""),
        )
    elif info.state == EXPIRED:
        changes.update(state=TIMEOUT, detail=info.error_message or "the deploy expired unanswered")
    else:
        changes.update(
            state=COMMITTED if info.state == ANSWERED else FAILED,
            detail=info.error_message or ("cancelled" if info.state == CANCELLED else ""),
        )
    return changes


class DeploymentDriver:
    """Drives rollouts stored in ``store`` through ``fleet``; call :meth:`step` repeatedly."""

    def __init__(
        self,
        store: Store,
        fleet: FleetPort,
        *,
        owner: str | None = None,
        on_event: EventFn | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.dstore = DeploymentStore(store)
        self.commands = CommandStore(store)
        self.owner = owner or default_owner()
        self._on_event = on_event
        self._clock = clock
        self.offline_since: dict[str, float] = {}
        self._came_back: set[str] = set()  # devices back online since the last pass

    # -- events ---------------------------------------------------------------------------------
    def _emit(self, event: str, **data: Any) -> None:
        logger.info("%s: %s", event, data)
        if self._on_event is not None:
            try:
                self._on_event(event, data)
            except Exception:  # a display bug must not stop a rollout
                logger.exception("deploy event callback failed")

    # -- devices --------------------------------------------------------------------------------
    def online(self, device_id: str) -> bool:
        record = self.fleet.registry.get(device_id)
        return bool(record and record.online and record.birth)

    def _online_since(self, device_id: str) -> float | None:
        record = self.fleet.registry.get(device_id)
        return record.online_since if record is not None else None

    def _observe(self, devices: Iterable[str]) -> None:
        now = self._clock()
        for device in set(devices):
            if self.online(device):
                if self.offline_since.pop(device, None) is not None:
                    self._came_back.add(device)
            else:
                self.offline_since.setdefault(device, now)

    # -- the loop body --------------------------------------------------------------------------
    def step(self, rollout_ids: Iterable[str] | None = None) -> None:
        """One pass over the open rollouts (or just these)."""
        wanted = set(rollout_ids) if rollout_ids is not None else None
        for rollout in self.dstore.list_rollouts(open_only=True):
            if wanted is not None and rollout.rollout_id not in wanted:
                continue
            try:
                self._drive(rollout)
            except EdgeTailorError as exc:
                logger.error("rollout %s: %s", rollout.rollout_id, exc)
            except Exception:  # one rollout's bug must not stop the others
                logger.exception("rollout %s failed a step", rollout.rollout_id)

    def _drive(self, rollout: RolloutInfo) -> None:
        targets = self.dstore.targets(rollout.rollout_id)
        self._observe(t.device_id for t in targets)
        if rollout.status == ACTIVE:
            self._send(rollout, [t for t in targets if t.state == PENDING])
        for target in targets:
            if target.state in (SENT, TIMEOUT):
                self._follow(rollout, target)
            if target.rollback_state == RB_PENDING:
                self._send_rollback(target)
            elif target.rollback_state == RB_SENT:
                self._follow_rollback(rollout, target)
        rollout = self.dstore.get_rollout(rollout.rollout_id) or rollout
        targets = self.dstore.targets(rollout.rollout_id)
        if rollout.status == ACTIVE:
            self._judge(rollout, targets)
        else:
            if rollout.status == ABORTED and rollout.aborted_wave is not None:
                # Devices of the failed wave that answered "committed" after the abort.
                self.dstore.request_rollbacks(
                    rollout.rollout_id,
                    f"rollout aborted in wave {rollout.aborted_wave}",
                    wave=rollout.aborted_wave,
                )
            elif rollout.status == ROLLED_BACK_ROLLOUT:
                self.dstore.request_rollbacks(rollout.rollout_id, "the rollout was rolled back")
            targets = self.dstore.targets(rollout.rollout_id)
            if not any(
                t.state == SENT or t.rollback_state in (RB_PENDING, RB_SENT) for t in targets
            ):
                self.dstore.update_rollout(rollout.rollout_id, open=False)

    # -- sending --------------------------------------------------------------------------------
    def _send(self, rollout: RolloutInfo, pending: list[TargetInfo]) -> None:
        """Record the deploy commands of every pending target whose device is online, in one
        transaction: the command driver publishes them together, so the devices fetching the
        same artifact start together and the broker fans one stream out to all of them."""
        ready = {t.deploy_id: t for t in pending if self.online(t.device_id)}
        if not ready:
            return
        claimed = self.dstore.claim_targets(ready, PENDING, self.owner, CLAIM_LEASE_S)
        settings = rollout.settings
        builds: dict[str, Callable[[int], DeployCmd]] = {}
        offered: dict[tuple[str, str | None], ArtifactManifest] = {}

        def offer(path: str, manifest: ArtifactManifest | None) -> ArtifactManifest:
            # Each file once per pass: a rollout names the same artifact for many devices.
            key = (path, manifest.sha256 if manifest is not None else None)
            if key not in offered:
                offered[key] = self.fleet.offer(path, manifest)
            return offered[key]

        for deploy_id in claimed:
            target = ready[deploy_id]
            try:
                if target.artifact_path is None or target.manifest is None:
                    raise ConfigError(f"deploy {target.deploy_id} names no artifact file")
                base = msgspec.convert(target.manifest, ArtifactManifest)
                offer(target.artifact_path, base)
                eval_manifest = (
                    offer(target.eval_path, None) if target.eval_path is not None else None
                )
                # Checked now, so that one bad target cannot fail the others' transaction.
                self._deploy_command(target, base, eval_manifest, 1, settings=settings)
            except EdgeTailorError as exc:
                self._not_sent(rollout, target, exc)
                continue
            builds[deploy_id] = functools.partial(
                self._deploy_command, target, base, eval_manifest, settings=settings
            )
        try:
            sent = self.dstore.mark_sent_many(self.owner, builds)
        except EdgeTailorError as exc:
            for deploy_id in builds:
                self._not_sent(rollout, ready[deploy_id], exc)
            return
        if sent:
            self.fleet.commands.wake()
        for deploy_id, sequence in sent.items():
            target = ready[deploy_id]
            self._emit(
                "sent", device=target.device_id, deploy_id=target.deploy_id,
                sha256=target.sha256, wave=target.wave, sequence=sequence,
                rollout=rollout.rollout_id,
            )  # fmt: skip

    def _not_sent(self, rollout: RolloutInfo, target: TargetInfo, exc: Exception) -> None:
        logger.warning("deploy %s to %s not sent: %s", target.deploy_id, target.device_id, exc)
        self.dstore.update_target(
            target.deploy_id, expect_states=(PENDING,), state=FAILED, error_code="not_sent",
            detail=str(exc), finished_at=self._clock(), claimed_by=None, claim_until=None,
        )  # fmt: skip
        self._emit("outcome", device=target.device_id, outcome=FAILED, detail=str(exc),
                   rollout=rollout.rollout_id)  # fmt: skip

    def _deploy_command(
        self,
        target: TargetInfo,
        base: ArtifactManifest,
        eval_manifest: ArtifactManifest | None,
        sequence: int,
        *,
        settings: dict[str, Any],
    ) -> DeployCmd:
        """The deploy, its manifest addressed to the device with its deploy sequence (signed by
        the command driver, with the key the device pins, when it is published)."""
        manifest = msgspec.structs.replace(
            base, target_device=target.device_id, sequence=sequence, key_id=None, signature=None
        )
        try:
            return msgspec.convert(
                {
                    "deploy_id": target.deploy_id,
                    "model": msgspec.to_builtins(manifest),
                    "eval_data": msgspec.to_builtins(eval_manifest) if eval_manifest else None,
                    "chunk_size": int(settings.get("chunk_size") or self.fleet.chunk_size),
                    # The picked variant's thread count wins over the rollout-wide setting.
                    "threads": target.threads or settings.get("threads"),
                    "runtime": target.runtime,
                    "latency_budget_ms": target.latency_budget_ms,
                    "min_metric": target.min_metric,
                    "health_runs": int(settings.get("health_runs", 20)),
                    "timeout_s": float(settings.get("timeout_s", 300.0)),
                },
                DeployCmd,
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid deploy settings for {target.device_id}: {exc}") from exc

    # -- answers --------------------------------------------------------------------------------
    def _follow(self, rollout: RolloutInfo, target: TargetInfo) -> None:
        info = self.commands.get(target.command_msg_id) if target.command_msg_id else None
        now = self._clock()
        if info is not None and info.final:
            changes = outcome_from_command(info)
            if self.dstore.update_target(
                target.deploy_id, expect_states=(SENT, TIMEOUT), finished_at=now,
                stage="done", **changes,
            ):  # fmt: skip
                self._emit(
                    "outcome", device=target.device_id, outcome=changes["state"],
                    detail=changes.get("detail") or "", rollout=rollout.rollout_id,
                )  # fmt: skip
            return
        if target.state == TIMEOUT:
            return  # final, but a late answer above still says what the device did
        if info is not None and info.stage is not None and info.stage != target.stage:
            self.dstore.update_target(target.deploy_id, expect_states=(SENT,), stage=info.stage)
            self._emit("stage", device=target.device_id, stage=info.stage,
                       rollout=rollout.rollout_id)  # fmt: skip
        if target.device_id in self._came_back:
            # Time the device spent away does not count against the answer's deadline (the
            # command driver publishes the deploy again now that it is back).
            self._came_back.discard(target.device_id)
            self.dstore.update_target(target.deploy_id, expect_states=(SENT,), sent_at=now)
            return
        budget = float(rollout.settings.get("timeout_s", 300.0)) + TRANSFER_ALLOWANCE_S
        if self.online(target.device_id) and target.sent_at and now - target.sent_at > budget:
            detail = (
                f"deploy {target.deploy_id} on device {target.device_id} gave no final answer "
                f"within {budget:.0f} s (last stage: {target.stage}); the device may be busy"
            )
            if self.dstore.update_target(
                target.deploy_id, expect_states=(SENT,), state=TIMEOUT, error_code="timeout",
                detail=detail, finished_at=now,
            ):  # fmt: skip
                self._emit("outcome", device=target.device_id, outcome=TIMEOUT, detail=detail,
                           rollout=rollout.rollout_id)  # fmt: skip

    # -- waves ----------------------------------------------------------------------------------
    def _judge(self, rollout: RolloutInfo, targets: list[TargetInfo]) -> None:
        for wave in range(1, rollout.current_wave + 1):
            members = [t for t in targets if t.wave == wave]
            failed = [t for t in members if t.state in FAILED_STATES]
            if len(failed) > rollout.max_failures:
                self._abort(rollout, wave, members, failed)
                return
        now = self._clock()
        grace = float(rollout.settings.get("offline_grace_s", DEFAULT_OFFLINE_GRACE_S))
        current = [t for t in targets if t.wave == rollout.current_wave]
        settled = all(
            t.final or (not self.online(t.device_id) and now - rollout.wave_started >= grace)
            for t in current
        )
        if not settled:
            return
        if rollout.current_wave < len(rollout.waves):
            if self.dstore.advance_wave(rollout.rollout_id, rollout.current_wave):
                wave = rollout.current_wave + 1
                self._emit("wave", wave=wave, devices=rollout.waves[wave - 1],
                           rollout=rollout.rollout_id)  # fmt: skip
        elif all(t.final for t in targets) and self.dstore.update_rollout(
            rollout.rollout_id, expect_status=ACTIVE, status=DONE, open=False
        ):
            self._emit("done", rollout=rollout.rollout_id)

    def _abort(
        self,
        rollout: RolloutInfo,
        wave: int,
        members: list[TargetInfo],
        failed: list[TargetInfo],
    ) -> None:
        reason = (
            f"wave {wave}: {len(failed)} of {len(members)} devices failed "
            f"({', '.join(f'{t.device_id}: {t.state}' for t in failed)}), more than "
            f"--max-failures {rollout.max_failures}; the wave was rolled back and later waves "
            "skipped"
        )
        if not self.dstore.update_rollout(
            rollout.rollout_id, expect_status=ACTIVE, status=ABORTED, aborted_wave=wave,
            reason=reason,
        ):  # fmt: skip
            return
        self.dstore.skip_open(rollout.rollout_id, f"not sent: the rollout was aborted ({reason})")
        self.dstore.request_rollbacks(
            rollout.rollout_id, f"rollout aborted in wave {wave}", wave=wave
        )
        self._emit("abort", wave=wave, reason=reason, rollout=rollout.rollout_id)

    # -- rollbacks ------------------------------------------------------------------------------
    def _send_rollback(self, target: TargetInfo) -> None:
        if not self.online(target.device_id):
            return
        if not self.dstore.claim_rollback(target.deploy_id, self.owner, CLAIM_LEASE_S):
            return
        command = RollbackCmd(deploy_id=target.deploy_id, reason=target.rollback_reason[:4000])
        if self.dstore.mark_rollback_sent(target.deploy_id, self.owner, command=command):
            self.fleet.commands.wake()
            self._emit("rollback_sent", device=target.device_id, deploy_id=target.deploy_id,
                       rollout=target.rollout_id)  # fmt: skip

    def _follow_rollback(self, rollout: RolloutInfo, target: TargetInfo) -> None:
        info = self.commands.get(target.rollback_msg_id) if target.rollback_msg_id else None
        if info is None or not info.final:
            return
        parsed = deploy_result(info)
        if parsed is not None and parsed.outcome == "restored":
            undone = WAVE_ROLLED_BACK if rollout.status == ABORTED else REVERTED
            detail = (
                "committed, then rolled back with its wave"
                if undone == WAVE_ROLLED_BACK
                else "committed, then rolled back with its rollout"
            )
            self.dstore.update_target(
                target.deploy_id, rollback_state=RB_RESTORED, state=undone,
                active_sha256=parsed.active_sha256, previous_sha256=parsed.previous_sha256,
                detail=detail,
            )  # fmt: skip
            self._emit("rolled_back", device=target.device_id, outcome=undone,
                       rollout=rollout.rollout_id)  # fmt: skip
        else:
            what = parsed.outcome if parsed is not None else info.state
            text = (parsed.detail if parsed is not None else "") or info.error_message or ""
            self.dstore.update_target(
                target.deploy_id, rollback_state=RB_REFUSED,
                detail=f"{target.detail}; rollback: {what} ({text})".lstrip("; "),
            )  # fmt: skip
            self._emit("rollback_refused", device=target.device_id, detail=text,
                       rollout=rollout.rollout_id)  # fmt: skip

    # -- requests from people -------------------------------------------------------------------
    def cancel(self, rollout_id: str) -> bool:
        """Stop sending; what was sent finishes. False when the rollout was no longer active."""
        if not self.dstore.update_rollout(
            rollout_id, expect_status=ACTIVE, status="cancelled", reason="cancelled on request"
        ):
            return False
        self.dstore.skip_open(rollout_id, "not sent: the rollout was cancelled")
        self._emit("cancelled", rollout=rollout_id)
        return True

    def roll_back(self, rollout_id: str, reason: str = "rolled back on request") -> list[str]:
        """Stop sending and roll back every device this rollout committed on."""
        rollout = self.dstore.get_rollout(rollout_id)
        if rollout is None:
            return []
        self.dstore.update_rollout(rollout_id, status=ROLLED_BACK_ROLLOUT, open=True, reason=reason)
        self.dstore.skip_open(rollout_id, f"not sent: {reason}")
        devices = self.dstore.request_rollbacks(rollout_id, reason)
        self._emit("rolling_back", rollout=rollout_id, devices=devices)
        return devices

    # -- inline use (the CLI without a service) -------------------------------------------------
    def run(
        self,
        rollout_id: str,
        *,
        grace_s: float = DEFAULT_OFFLINE_GRACE_S,
        poll_s: float = 0.2,
    ) -> None:
        """Drive one rollout until nothing is left, or what is left waits on devices that have
        been offline for ``grace_s`` (a service, or the next deploy, carries on from there)."""
        while True:
            self.step([rollout_id])
            rollout = self.dstore.get_rollout(rollout_id)
            if rollout is None or not rollout.open:
                return
            if rollout.status == ACTIVE:
                left = [t for t in self.dstore.targets(rollout_id) if not t.final]
                if rollout.current_wave < len(rollout.waves):
                    left = []  # later waves still to start: not done
            else:
                left = [
                    t
                    for t in self.dstore.targets(rollout_id)
                    if t.state == SENT or t.rollback_state in (RB_PENDING, RB_SENT)
                ]
            now = self._clock()
            if left and all(
                not self.online(t.device_id)
                and now - self.offline_since.get(t.device_id, now) >= grace_s
                for t in left
            ):
                return
            time.sleep(poll_s)


__all__ = [
    "CLAIM_LEASE_S",
    "DEFAULT_OFFLINE_GRACE_S",
    "TRANSFER_ALLOWANCE_S",
    "DeploymentDriver",
    "FleetPort",
    "default_owner",
    "deploy_result",
    "outcome_from_command",
]
