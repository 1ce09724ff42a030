"""Per device: what it should run (desired), what it reports running (actual), and why they differ.

The desired model of a device is its newest rollout target that is still meant to hold: one that
is waiting, pending, sent or committed. A target that failed or was rolled back is shown as the
reason when it is the newest one, because that is what a person asks about ("I deployed X; why
does the board still run Y?").
"""

from __future__ import annotations

import time
from typing import Any

from host.store.deployments import (
    COMMITTED,
    FAILED_STATES,
    PENDING,
    SENT,
    SKIPPED,
    SUPERSEDED,
    UNDONE_STATES,
    WAITING,
    DeploymentStore,
    TargetInfo,
)

_HOLDING = (WAITING, PENDING, SENT, COMMITTED)


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return "at an unknown time"
    seconds = max(0.0, now - ts)
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def desired_state(
    dstore: DeploymentStore,
    device_id: str,
    *,
    actual_sha256: str | None,
    online: bool,
    last_seen: float | None = None,
    now: float | None = None,
    seen: bool = True,
) -> dict[str, Any]:
    """``{"desired": {...} | None, "in_sync": bool, "reason": str}`` for one device; ``seen``
    False: a device this host has never seen (a deploy to it was accepted as pending)."""
    now = time.time() if now is None else now
    targets = [
        t for t in dstore.targets(device_id=device_id) if t.state not in (SKIPPED, SUPERSEDED)
    ]
    holding = [t for t in targets if t.state in _HOLDING]
    newest = targets[-1] if targets else None
    desired = holding[-1] if holding else None
    doc: dict[str, Any] = {
        "desired": _target_doc(desired) if desired else None,
        "last_deploy": _target_doc(newest) if newest else None,
        "actual_sha256": actual_sha256,
    }
    if desired is None and newest is None:
        doc.update(in_sync=True, reason="no deploy was ever asked for this device")
        return doc
    if (
        newest is not None
        and newest is not desired
        and newest.state
        in (
            *FAILED_STATES,
            *UNDONE_STATES,
        )
    ):
        why = _failed_reason(newest)
        if desired is None or desired.sha256 == actual_sha256:
            doc.update(in_sync=desired is not None, reason=why)
            return doc
    target = desired or newest
    if target is None:
        return doc
    if target.sha256 == actual_sha256:
        doc.update(
            in_sync=True, reason=f"runs its desired model ({target.label or target.sha256[:12]})"
        )
        return doc
    doc["in_sync"] = False
    if target.state == PENDING and not seen:
        doc["reason"] = (
            "pending until first seen: this device has never connected to this host; the deploy "
            "is sent when it first comes online"
        )
    elif target.state == WAITING:
        doc["reason"] = f"wave {target.wave} of rollout {target.rollout_id} has not started yet"
    elif target.state == PENDING and not online:
        doc["reason"] = (
            f"the device is offline (last seen {_ago(last_seen, now)}); the deploy is sent when "
            "it comes back"
        )
    elif target.state == PENDING:
        doc["reason"] = "the deploy is about to be sent"
    elif target.state == SENT and not online:
        doc["reason"] = (
            f"the deploy was sent {_ago(target.sent_at, now)} and the device went offline; it "
            "is sent again when the device comes back"
        )
    elif target.state == SENT:
        doc["reason"] = (
            f"the deploy was sent {_ago(target.sent_at, now)}; the device reports stage "
            f"{target.stage or 'none yet'}"
        )
    elif target.state == COMMITTED and actual_sha256 is None:
        doc["reason"] = "committed, but the device has not reported its active model since"
    elif target.state == COMMITTED:
        doc["reason"] = (
            f"committed {_ago(target.finished_at, now)}, but the device now reports "
            f"{actual_sha256[:12] if actual_sha256 else 'no model'}: it was changed outside "
            "this rollout (a manual rollback or another host)"
        )
    else:
        doc["reason"] = _failed_reason(target)
    return doc


def _failed_reason(target: TargetInfo) -> str:
    if target.state == "rolled_back":
        return f"the health check failed on the device, which kept its model: {target.detail}"
    if target.state in UNDONE_STATES:
        return f"deploy {target.deploy_id} was rolled back: {target.detail}"
    return f"deploy {target.deploy_id} {target.state}: [{target.error_code}] {target.detail}"


def _target_doc(target: TargetInfo) -> dict[str, Any]:
    return {
        "deploy_id": target.deploy_id,
        "rollout_id": target.rollout_id,
        "sha256": target.sha256,
        "label": target.label,
        "state": target.state,
        "wave": target.wave,
        "sequence": target.sequence,
        "stage": target.stage,
        "sent_at": target.sent_at,
        "finished_at": target.finished_at,
        "detail": target.detail,
    }


def never_seen(dstore: DeploymentStore, known: set[str]) -> list[str]:
    """Devices a rollout waits for that this host has never seen (deployed to with pending_ok)."""
    waiting = {t.device_id for t in dstore.targets(states=(WAITING, PENDING))}
    return sorted(waiting - known)
