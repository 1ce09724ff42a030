"""One campaign from start (or resume) to selection: the candidate builder, then the scheduler."""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from host.campaign.candidates import CandidateBuilder
from host.campaign.context import CampaignContext
from host.campaign.events import Emitter, ProgressFn
from host.campaign.outcome import campaign_outcome
from host.campaign.scheduler import DeviceScheduler
from host.campaign.spec import (
    CampaignCancelled,
    CampaignError,
    CampaignSpec,
    check_campaign_id,
    default_work_root,
    new_campaign_id,
)
from host.store.campaigns import CampaignStore

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store


class CampaignRunner:
    """Runs (or resumes) one campaign against a connected Fleet; state lives in the Store."""

    def __init__(
        self,
        spec: CampaignSpec,
        store: Store,
        fleet: Fleet,
        *,
        campaign_id: str | None = None,
        work_dir: str | Path | None = None,
        progress: ProgressFn | None = None,
        device_wait_s: float = 30.0,
        cancelled: threading.Event | None = None,
    ) -> None:
        campaign_id = check_campaign_id(campaign_id or new_campaign_id())
        self.ctx = CampaignContext(
            spec=spec,
            store=store,
            cstore=CampaignStore(store),
            fleet=fleet,
            campaign_id=campaign_id,
            work_dir=Path(work_dir or default_work_root() / campaign_id).expanduser(),
            emit=Emitter(progress),
            cancelled=cancelled or threading.Event(),
        )
        self.builder = CandidateBuilder(self.ctx)
        self.scheduler = DeviceScheduler(self.ctx, device_wait_s=device_wait_s)

    @property
    def spec(self) -> CampaignSpec:
        return self.ctx.spec

    @property
    def cstore(self) -> CampaignStore:
        return self.ctx.cstore

    @property
    def campaign_id(self) -> str:
        return self.ctx.campaign_id

    @property
    def work_dir(self) -> Path:
        return self.ctx.work_dir

    # -- entry point ---------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        started = time.monotonic()
        existing = self.cstore.get_campaign(self.campaign_id)
        if existing is not None and not self.spec.same_as(existing.spec):
            raise CampaignError(
                f"campaign {self.campaign_id} exists with another spec; resume it with "
                f"`--resume {self.campaign_id}` (which reuses its spec) or pick a new --campaign-id"
            )
        resumed = existing is not None
        if resumed and existing.state.get("work_dir"):
            self.ctx.work_dir = Path(existing.state["work_dir"])
        self.cstore.create_campaign(self.campaign_id, self.spec.to_dict())
        self.cstore.update_campaign(
            self.campaign_id, state={"work_dir": str(self.ctx.work_dir), "error": None}
        )
        self.ctx.emit(
            "stage",
            f"campaign {self.campaign_id} {'resumed' if resumed else 'started'}",
            campaign=self.campaign_id,
            resumed=resumed,
        )

        work_dir_existed = self.work_dir.exists()
        try:
            self.cstore.update_campaign(self.campaign_id, status="compressing")
            prepared = self.builder.prepare()
            self.builder.make_candidates(prepared)
            survivors = self.builder.screen()
            candidates_s = time.monotonic() - started
            devices = self.scheduler.resolve_devices()
            self.cstore.update_campaign(
                self.campaign_id, status="measuring", state={"devices": devices}
            )
            self.scheduler.measure(survivors, devices, prepared)
        except Exception as exc:
            # The stored campaign says it failed and why (not "compressing" for ever), and a work
            # folder this run made and left empty goes. `--resume` retries it once fixed.
            status = "cancelled" if isinstance(exc, CampaignCancelled) else "failed"
            error = f"{exc}" or type(exc).__name__
            self.cstore.update_campaign(
                self.campaign_id, status=status, state={"error": error[:2000]}
            )
            if not work_dir_existed:
                with contextlib.suppress(OSError):  # never hide the error that ended the run
                    _remove_if_empty(self.work_dir)
            raise
        outcome = self.outcome()
        outcome["campaign"]["timings"] = {
            "candidates_s": round(candidates_s, 1),
            "measure_s": round(time.monotonic() - started - candidates_s, 1),
        }
        self.cstore.update_campaign(
            self.campaign_id,
            status="done",
            selection=outcome["selection"],
            state={"seconds_last_run": round(time.monotonic() - started, 1)},
        )
        outcome["campaign"]["status"] = "done"
        outcome["campaign"]["seconds"] = round(time.monotonic() - started, 1)
        self.ctx.emit(
            "stage", f"campaign {self.campaign_id} done", seconds=outcome["campaign"]["seconds"]
        )
        return outcome

    def outcome(self) -> dict[str, Any]:
        return campaign_outcome(self.cstore, self.campaign_id)


def _remove_if_empty(folder: Path) -> None:
    """Remove ``folder`` and the empty folders inside it; anything with a file in it stays."""
    if not folder.is_dir():
        return
    for sub in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if sub.is_dir() and not any(sub.iterdir()):
            sub.rmdir()
    if not any(folder.iterdir()):
        folder.rmdir()


def run_campaign(
    spec: CampaignSpec,
    store: Store,
    fleet: Fleet,
    *,
    campaign_id: str | None = None,
    work_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
) -> dict[str, Any]:
    """Run or resume a campaign; returns the document `edgetailor campaign --json` prints."""
    return CampaignRunner(
        spec, store, fleet, campaign_id=campaign_id, work_dir=work_dir, progress=progress
    ).run()
