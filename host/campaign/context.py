"""What every part of a running campaign shares: its spec, stores, fleet, id and work dir, and
whether it was cancelled."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from host.campaign.events import Emitter
from host.campaign.spec import CampaignCancelled, CampaignSpec

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store
    from host.store.campaigns import CampaignStore


@dataclass
class CampaignContext:
    spec: CampaignSpec
    store: Store
    cstore: CampaignStore
    fleet: Fleet
    campaign_id: str
    work_dir: Path  # replaced by the stored one when a campaign is resumed
    emit: Emitter
    # Set by whoever runs the campaign (the service's job runner, when the API cancels it): each
    # new device step (a wait, a send, a poll for an answer) then raises CampaignCancelled.
    cancelled: threading.Event = field(default_factory=threading.Event)

    def check_cancelled(self) -> None:
        if self.cancelled.is_set():
            raise CampaignCancelled("the campaign was cancelled")
