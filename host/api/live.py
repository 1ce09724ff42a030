"""Live updates for server-sent events: changes read from the database, fanned out to listeners.

The database is the source of truth, so the watcher reads what changed there (rows whose
``updated``/``last_seen`` moved) rather than listening inside this process: every service replica
then streams the same events, whichever replica received the MQTT message or made the change.

Event types: ``device`` (online/offline, birth), ``telemetry``, ``campaign`` (status and progress
of a campaign and its job), ``deployment`` (a rollout's status and each device's state),
``search`` (a search's status, and per device its trials by decision and its board measurements).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from host.search.store import SearchMeasurementRow, SearchRow, SearchTrialRow
from host.store import Store
from host.store.campaigns import CampaignJobRow, CampaignRow
from host.store.deployments import RolloutRow, RolloutTargetRow
from host.store.models import DeviceRow
from host.store.service import ServiceJobRow

logger = logging.getLogger(__name__)

EVENT_TYPES = ("device", "telemetry", "campaign", "deployment", "search")
HISTORY = 1000


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: dict[str, Any]

    def sse(self) -> str:
        return f"id: {self.id}\nevent: {self.type}\ndata: {json.dumps(self.data, default=str)}\n\n"


class EventBus:
    """Thread-safe publish; each listener is an asyncio queue on its own event loop."""

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._history: deque[Event] = deque(maxlen=HISTORY)
        self._listeners: list[tuple[asyncio.AbstractEventLoop, asyncio.Queue[Event]]] = []
        self._lock = threading.Lock()

    def publish(self, type_: str, data: dict[str, Any]) -> Event:
        with self._lock:
            event = Event(next(self._ids), type_, data)
            self._history.append(event)
            listeners = list(self._listeners)
        for loop, queue in listeners:
            try:
                loop.call_soon_threadsafe(_offer, queue, event)
            except RuntimeError:  # that loop is closed: its listener is gone
                self.unsubscribe(queue)
        return event

    def subscribe(
        self, loop: asyncio.AbstractEventLoop, after: int | None = None
    ) -> asyncio.Queue[Event]:
        """A queue of new events; with ``after`` (a Last-Event-ID) the missed ones come first."""
        queue: asyncio.Queue[Event] = asyncio.Queue(maxsize=HISTORY)
        with self._lock:
            if after is not None:
                for event in self._history:
                    if event.id > after:
                        queue.put_nowait(event)
            self._listeners.append((loop, queue))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[Event]) -> None:
        with self._lock:
            self._listeners = [(lp, q) for lp, q in self._listeners if q is not queue]

    @property
    def listeners(self) -> int:
        with self._lock:
            return len(self._listeners)


def _offer(queue: asyncio.Queue[Event], event: Event) -> None:
    try:
        queue.put_nowait(event)
    except asyncio.QueueFull:  # a listener that does not read loses events, never the service
        logger.warning("an event listener is %d events behind; event %d dropped", HISTORY, event.id)


class ChangeWatcher:
    """Polls the tables for rows changed since the last look and publishes them on the bus."""

    def __init__(self, store: Store, bus: EventBus, poll_s: float = 0.5) -> None:
        self.store = store
        self.bus = bus
        self.poll_s = poll_s
        self._seen: dict[tuple[str, str], Any] = {}
        self._since = time.time() - 1.0
        self._stop = threading.Event()

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self) -> None:
        while not self._stop.wait(self.poll_s):
            try:
                self.poll()
            except Exception:
                logger.exception("event watcher failed a poll")

    def _changed(self, key: tuple[str, str], marker: Any) -> bool:
        if self._seen.get(key) == marker:
            return False
        self._seen[key] = marker
        return True

    def poll(self) -> None:
        # A second of overlap: a row committed just after our previous read with an earlier
        # timestamp is still seen; the markers keep it from being published twice.
        since, self._since = self._since - 1.0, time.time()
        with self.store.read() as session:
            devices = session.scalars(select(DeviceRow).where(DeviceRow.last_seen >= since)).all()
            for row in devices:
                if self._changed(("device", row.device_id), (row.online, bool(row.birth))):
                    self.bus.publish("device", {
                        "device_id": row.device_id, "online": row.online,
                        "last_seen": row.last_seen,
                        "agent_version": (row.birth or {}).get("agent_version"),
                    })  # fmt: skip
                if row.telemetry and self._changed(
                    ("telemetry", row.device_id), row.last_telemetry_at
                ):
                    self.bus.publish("telemetry", {
                        "device_id": row.device_id, "at": row.last_telemetry_at, **row.telemetry,
                    })  # fmt: skip
            campaigns = {
                row.campaign_id: row
                for row in session.scalars(select(CampaignRow).where(CampaignRow.updated >= since))
            }
            for job_row in session.scalars(
                select(CampaignJobRow).where(CampaignJobRow.updated >= since)
            ):
                campaigns.setdefault(
                    job_row.campaign_id, session.get(CampaignRow, job_row.campaign_id)
                )
            for service_job in session.scalars(
                select(ServiceJobRow).where(ServiceJobRow.updated >= since)
            ):
                campaigns.setdefault(
                    service_job.job_id, session.get(CampaignRow, service_job.job_id)
                )
            for campaign_id, campaign in campaigns.items():
                if campaign is None:
                    continue
                states = session.scalars(
                    select(CampaignJobRow.status).where(CampaignJobRow.campaign_id == campaign_id)
                ).all()
                counts = {s: states.count(s) for s in sorted(set(states))}
                job = session.get(ServiceJobRow, campaign_id)
                marker = (campaign.status, campaign.updated, tuple(counts.items()),
                          job.state if job else None, json.dumps(job.progress if job else None))  # fmt: skip
                if self._changed(("campaign", campaign_id), marker):
                    self.bus.publish("campaign", {
                        "campaign_id": campaign_id, "status": campaign.status, "jobs": counts,
                        "service_job": job.state if job else None,
                        "progress": job.progress if job else {},
                    })  # fmt: skip
            self._poll_searches(session, since)
            rollouts = {
                row.rollout_id: row
                for row in session.scalars(select(RolloutRow).where(RolloutRow.updated >= since))
            }
            for target in session.scalars(
                select(RolloutTargetRow).where(RolloutTargetRow.updated >= since)
            ):
                rollouts.setdefault(target.rollout_id, session.get(RolloutRow, target.rollout_id))
            for rollout_id, rollout in rollouts.items():
                if rollout is None:
                    continue
                targets = session.scalars(
                    select(RolloutTargetRow).where(RolloutTargetRow.rollout_id == rollout_id)
                ).all()
                devices_doc = {t.device_id: {"state": t.state, "stage": t.stage} for t in targets}
                marker = (rollout.status, rollout.current_wave, json.dumps(devices_doc))
                if self._changed(("deployment", rollout_id), marker):
                    self.bus.publish("deployment", {
                        "rollout_id": rollout_id, "status": rollout.status,
                        "current_wave": rollout.current_wave, "waves": len(rollout.waves),
                        "devices": devices_doc,
                    })  # fmt: skip

    def _poll_searches(self, session: Any, since: float) -> None:
        searches = {
            row.search_id: row
            for row in session.scalars(select(SearchRow).where(SearchRow.updated >= since))
        }
        for table, stamp in (
            (SearchTrialRow, SearchTrialRow.created),
            (SearchMeasurementRow, SearchMeasurementRow.updated),
        ):
            for row in session.scalars(select(table).where(stamp >= since)):
                searches.setdefault(row.search_id, session.get(SearchRow, row.search_id))
        for search_id, search in searches.items():
            if search is None:
                continue
            devices: dict[str, dict[str, Any]] = {}
            for trial in session.scalars(
                select(SearchTrialRow).where(SearchTrialRow.search_id == search_id)
            ):
                decisions = devices.setdefault(trial.device_id, {"decisions": {}, "measured": 0})
                counts = decisions["decisions"]
                counts[trial.decision] = counts.get(trial.decision, 0) + 1
            for m in session.scalars(
                select(SearchMeasurementRow).where(SearchMeasurementRow.search_id == search_id)
            ):
                devices.setdefault(m.device_id, {"decisions": {}, "measured": 0})["measured"] += 1
            marker = (search.status, search.updated, json.dumps(devices, sort_keys=True))
            if self._changed(("search", search_id), marker):
                self.bus.publish("search", {
                    "search_id": search_id, "status": search.status, "devices": devices,
                })  # fmt: skip
