"""What to deploy where: targets given directly, or from a campaign's stored selection."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.campaign.spec import CampaignSpec
from host.errors import ConflictError, HostError, NotFoundError
from host.select import Constraint
from host.store.campaigns import CampaignStore
from shared.errors import ConfigError
from shared.manifest import ArtifactManifest

if TYPE_CHECKING:
    from host.store import Store


class DeployError(HostError):
    """A deploy or rollout cannot start: unknown campaign, no selection, bad waves, ..."""


class DeployNotFoundError(DeployError, NotFoundError):
    """The deploy names a campaign, or a device of a campaign, that is not there."""


class DeployConflictError(DeployError, ConflictError):
    """The campaign a deploy names has no usable choice for it (yet)."""


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
    # The variant's runtime and thread count the board should use (None: the agent's default).
    runtime: str | None = None
    threads: int | None = None


def _latency_bound(constraints: Sequence[str], device: str | None = None) -> float | None:
    """The tightest ``latency_p90_ms<=X`` (or ``<``) bound among a campaign's constraints that
    bind ``device`` (those without ``@device``, and its own)."""

    bounds = []
    for text in constraints:
        try:
            constraint = Constraint.parse(text)
        except ConfigError:
            continue
        if constraint.name != "latency_p90_ms" or constraint.op not in ("<=", "<"):
            continue
        if device is None or constraint.applies_to(device):
            bounds.append(constraint.bound)
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
    wanted = list(devices) if devices else sorted(selection)
    targets = []
    for device in wanted:
        choice = selection.get(device)
        if choice is None:
            raise DeployNotFoundError(
                f"device {device!r} has no selection in this campaign; selected devices: "
                f"{', '.join(sorted(selection)) or 'none'}"
            )
        budget = (
            latency_budget_ms
            if latency_budget_ms is not None
            else _latency_bound(constraints, device)
        )
        candidate_id = choice.get("candidate")
        if not candidate_id:
            raise DeployConflictError(
                f"no candidate met the constraints on {device} ({choice.get('reason', '')}); "
                "relax the constraints or leave the device out with --devices"
            )
        candidate = by_id.get(str(choice.get("artifact") or candidate_id))
        path = Path(candidate["path"]) if candidate and candidate.get("path") else None
        if path is None or not path.is_file():
            raise DeployConflictError(
                f"the artifact of candidate {candidate_id} for {device} is missing ({path}); "
                "resume the campaign to rebuild it"
            )
        targets.append(DeployTarget(
            device_id=device, artifact=path,
            eval_path=eval_path if eval_path is not None and eval_path.is_file() else None,
            latency_budget_ms=budget, min_metric=min_metric, label=str(candidate_id),
            runtime=choice.get("runtime") or None,
            threads=int(choice["threads"]) if choice.get("threads") else None,
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

    cstore = CampaignStore(store)
    campaign = cstore.get_campaign(campaign_id)
    if campaign is None:
        known = ", ".join(c.campaign_id for c in cstore.list_campaigns()[-5:]) or "none"
        raise DeployNotFoundError(
            f"no campaign {campaign_id!r} in the database {store.safe_url()}; recent ones: "
            f"{known}; pass the same --db the campaign used"
        )
    if not campaign.selection:
        raise DeployConflictError(
            f"campaign {campaign_id} has no selection yet (status {campaign.status}); finish it "
            f"with `edgetailor campaign --resume {campaign_id}` first"
        )
    candidates = [
        {"id": c.candidate_id, "path": c.path, "sha256": c.sha256}
        for c in cstore.candidates(campaign_id)
    ]
    work_dir = campaign.state.work_dir
    return targets_from_selection(
        campaign.selection, candidates,
        eval_path=Path(work_dir) / "eval.npz" if work_dir else None,
        constraints=CampaignSpec.from_stored(campaign.spec).constraints, devices=devices,
        latency_budget_ms=latency_budget_ms, min_metric=min_metric,
    )  # fmt: skip
