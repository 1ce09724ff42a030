"""Campaigns as jobs of the service: queued through the API, run one at a time per process,
resumed after a restart from what the campaign tables hold (host.campaign resumes by id).

The runner renews its job's lease while the campaign runs; a process that dies stops renewing,
and the next service to look takes the job over and resumes the campaign. Cancelling a running
campaign stops it at its next device step (compression, once started, runs to its end): the
renewer sets the campaign's ``cancelled`` event (host.campaign.context), each device step then
raises :class:`CampaignCancelled`, the campaign's open benchmark commands are cancelled (a row
state: the command driver sends each device a signed cancel), its unfinished jobs end as failed
with that reason, and the stored selection covers what was measured. A campaign queued through the
API runs under the same reference policy it was checked with (``serve --allow-module``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from host.campaign import CampaignRunner, CampaignSpec
from host.campaign.references import ReferencePolicy
from host.errors import HostError
from host.store.campaigns import CampaignStore
from host.store.service import JOB_CANCELLING, JOB_DONE, JOB_FAILED, ServiceStore

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

logger = logging.getLogger(__name__)

LEASE_S = 60.0
RENEW_S = 10.0


class CampaignJobs:
    """Takes queued campaign jobs from the database and runs them on the service's fleet."""

    def __init__(
        self,
        store: Store,
        fleet: Fleet,
        owner: str,
        work_root: Any = None,
        policy: ReferencePolicy | None = None,
    ) -> None:
        self.store = store
        self.fleet = fleet
        self.owner = owner
        self.work_root = work_root
        self.policy = policy or ReferencePolicy.for_api()
        self.sstore = ServiceStore(store)
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self, poll_s: float = 1.0) -> None:
        while not self._stop.is_set():
            try:
                job = self.sstore.claim_next(self.owner, LEASE_S)
            except Exception:
                logger.exception("could not look for campaign jobs")
                job = None
            if job is None:
                self._stop.wait(poll_s)
                continue
            self.run_one(job.job_id, job.params)

    def run_one(self, campaign_id: str, params: dict[str, Any]) -> None:
        cancelled, finished = threading.Event(), threading.Event()
        progress: dict[str, Any] = {}
        renewer = threading.Thread(
            target=self._renew, args=(campaign_id, cancelled, finished, progress), daemon=True,
            name=f"lease-{campaign_id}",
        )  # fmt: skip
        renewer.start()
        try:
            stored = CampaignStore(self.store).get_campaign(campaign_id)
            if stored is None:
                raise HostError(f"campaign {campaign_id} is queued but has no stored spec")
            spec = CampaignSpec.from_stored(stored.spec)

            def on_event(event: Any) -> None:
                progress.update(kind=event.kind, message=event.message[:300], **{
                    k: v for k, v in event.data.items() if k in ("done", "total", "index")
                })  # fmt: skip

            runner = CampaignRunner(
                spec, self.store, self.fleet, campaign_id=campaign_id,
                work_dir=params.get("work_dir"), progress=on_event, policy=self.policy,
                cancelled=cancelled,
            )  # fmt: skip
            runner.run()
            self.sstore.finish(campaign_id, self.owner, JOB_DONE)
            logger.info("campaign %s finished", campaign_id)
        except Exception as exc:
            logger.exception("campaign %s failed", campaign_id)
            self.sstore.finish(campaign_id, self.owner, JOB_FAILED, f"{type(exc).__name__}: {exc}")
        finally:
            finished.set()  # stops the renewer
            renewer.join(timeout=5)

    def _renew(
        self,
        campaign_id: str,
        cancelled: threading.Event,
        finished: threading.Event,
        progress: dict[str, Any],
    ) -> None:
        deadline = time.monotonic() + RENEW_S
        while not finished.wait(0.5):
            if self._stop.is_set():
                # The service is stopping: the campaign is left as a crash would leave it, and
                # the next service to start resumes it at once instead of after the lease.
                self.sstore.release(campaign_id, self.owner)
                return
            if time.monotonic() < deadline:
                continue
            deadline = time.monotonic() + RENEW_S
            try:
                state = self.sstore.renew(campaign_id, self.owner, LEASE_S, dict(progress))
            except Exception:
                logger.exception("could not renew the lease of campaign %s", campaign_id)
                continue
            if state == JOB_CANCELLING:
                logger.info("campaign %s: cancelled", campaign_id)
                cancelled.set()
