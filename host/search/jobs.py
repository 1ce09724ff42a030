"""Searches as work of ``edgetailor serve``: every replica joins every open search queued through
the API (``POST /api/v1/searches``) as one more worker. Their trials share the search's Optuna studies and their board measurements are claimed in
the database, so replicas add speed and never measure a variant twice; a replica that dies leaves
its trials to the others (stale heartbeats are asked again) and its claims to whoever takes them
over."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from host.search.store import SearchStore

if TYPE_CHECKING:
    from host.fleet import Fleet
    from host.store import Store

logger = logging.getLogger(__name__)

OPEN_STATUSES = ("created", "running")


class SearchWorkers:
    """Polls the database for open searches and runs a worker on each one this process has not
    joined yet."""

    def __init__(self, store: Store, fleet: Fleet, owner: str, work_root: Path) -> None:
        self.store = store
        self.fleet = fleet
        self.owner = owner
        self.work_root = work_root
        self._stop = threading.Event()
        self._running: dict[str, threading.Thread] = {}

    def stop(self) -> None:
        self._stop.set()

    def run_forever(self, poll_s: float = 2.0) -> None:
        while not self._stop.wait(poll_s):
            try:
                self.poll()
            except Exception:
                logger.exception("could not look for open searches")

    def poll(self) -> None:
        for search in SearchStore(self.store).list_searches():
            if search.status not in OPEN_STATUSES or not search.state.get("service"):
                continue
            thread = self._running.get(search.search_id)
            if thread is not None and thread.is_alive():
                continue
            if thread is not None:  # it ended (done, or failed): not again
                continue
            thread = threading.Thread(
                target=self.run_one, args=(search.search_id,), daemon=True,
                name=f"search-{search.search_id}",
            )  # fmt: skip
            self._running[search.search_id] = thread
            thread.start()

    def run_one(self, search_id: str) -> None:
        from host.search import SearchSpec, run_search

        stored = SearchStore(self.store).get_search(search_id)
        if stored is None:
            return
        work = Path(stored.state.get("work_dir") or self.work_root / search_id)
        try:
            run_search(
                SearchSpec.from_dict(stored.spec), self.store, self.fleet, search_id=search_id,
                work_dir=work, worker=f"{self.owner}"[:100],
            )  # fmt: skip
            logger.info("search %s finished", search_id)
        except Exception:
            logger.exception("search %s failed", search_id)


__all__ = ["SearchWorkers"]
