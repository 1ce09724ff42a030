"""Campaigns: candidates x devices, measured on the real boards, resumable from the database.

A :class:`CampaignSpec` names a model, a data set, a search space (a registered name or a JSON file
that expands into recipes), the target devices and the constraints. :func:`run_campaign`:

1. trains/loads the baseline once (its weights are kept in the campaign's work dir, so a resumed
   campaign compresses the same model) and writes the eval set the devices score with;
2. compresses and exports one candidate per recipe and format, skipping those already stored;
3. screens them on the host: export failures are dropped, and so is a candidate that another one
   dominates on host metrics (no larger, no more MACs, and better by more than ``screen_margin``);
4. benchmarks every survivor on every target device: one job at a time per device (a benchmark
   must not disturb another), devices in parallel, per-job timeout and retries; a device that is
   offline is waited for up to ``offline_deadline_s``, after which its remaining jobs end with
   status ``offline``;
5. selects per device under the constraints (host.select) and stores the selection.

Every step is written to the database (host.store.campaigns) as it happens. Run the same campaign
id again (``--resume ID``) after a host crash and finished jobs are kept as they are; a job that was
sent but not answered is first waited for under its old job id (the agent keeps its result in its
outbox until this host acknowledges it), and only sent again when no answer comes. Artifacts are
content-addressed: a device that already holds one does not fetch it again (its TransferStats say
``already_stored``), and the store remembers which artifacts each device holds.

The package: ``spec`` (what a campaign is), ``candidates`` (steps 1-3 on the host),
``scheduler`` (steps 4-5 on the boards), ``outcome`` (the stored campaign read back), ``runner``
(the two halves in order).
"""

from host.campaign.candidates import CandidateBuilder, Prepared, screen_candidates
from host.campaign.events import CampaignEvent, ProgressFn
from host.campaign.outcome import (
    campaign_outcome,
    campaign_rows,
    campaign_selection,
    load_campaign,
    write_campaign_report,
)
from host.campaign.runner import CampaignRunner, run_campaign
from host.campaign.scheduler import DeviceScheduler
from host.campaign.spec import (
    CampaignCancelled,
    CampaignError,
    CampaignSpec,
    new_campaign_id,
    parse_devices,
    resolve_space,
)

__all__ = [
    "CampaignCancelled",
    "CampaignError",
    "CampaignEvent",
    "CampaignRunner",
    "CampaignSpec",
    "CandidateBuilder",
    "DeviceScheduler",
    "Prepared",
    "ProgressFn",
    "campaign_outcome",
    "campaign_rows",
    "campaign_selection",
    "load_campaign",
    "new_campaign_id",
    "parse_devices",
    "resolve_space",
    "run_campaign",
    "screen_candidates",
    "write_campaign_report",
]
