"""What every part of a running campaign shares: its spec, stores, fleet, id and work dir."""

from __future__ import annotations

from dataclasses import dataclass
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
