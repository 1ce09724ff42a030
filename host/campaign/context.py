"""What every part of a running campaign shares: its spec, stores, fleet, id and work dir."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from host.campaign.events import Emitter
from host.campaign.spec import CampaignSpec

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
    # Set to cancel: the measuring stops at its next step and cancels its open commands.
    cancelled: threading.Event = field(default_factory=threading.Event)
