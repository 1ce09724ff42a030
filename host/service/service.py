"""``edgetailor serve``: one process with the fleet side and the API.

Threads: paho's (host.fleet: registry, chunks, results stored as they arrive), the deployment
driver's loop (host.deploy.driver), the campaign jobs' loop (host.service.campaigns), the event
watcher (host.api.live), and uvicorn's event loop serving the FastAPI app (host.api). All
state is in the database: kill the process at any point and the next start carries on.
"""

from __future__ import annotations

import importlib
import ipaddress
import logging
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from host.api import ApiContext, create_app
from host.api.context import LOOPBACK_HOSTS
from host.api.live import ChangeWatcher, EventBus
from host.artifacts import UploadLimits
from host.campaign.references import ReferencePolicy
from host.deploy.driver import DeploymentDriver, default_owner
from host.fleet import Fleet
from host.search.jobs import SearchWorkers
from host.security import Scope
from host.service.campaigns import CampaignJobs
from host.store import Store
from host.store.service import ServiceStore
from shared.broker_url import TlsOptions

logger = logging.getLogger(__name__)

DRIVER_POLL_S = 0.5


@dataclass
class ServiceConfig:
    broker: str
    db: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    base_topic: str = "edgetailor"
    tls: TlsOptions | None = None
    signing_key: Any = None
    home: Path = Path("~/.edgetailor")
    new_token: bool = False
    log_level: str = "info"
    # Replicas on one database share results and chunk requests through $share/<group>/...
    share_group: str | None = None
    # Module prefixes whose code campaigns posted through the API may name (none by default).
    allow_modules: tuple[str, ...] = ()
    # Host header names the API answers to, on top of the bind address (see allowed_hosts).
    allow_hosts: tuple[str, ...] = ()
    # Reads without a token (every /api GET); off by default.
    open_reads: bool = False
    upload_limits: UploadLimits = field(default_factory=UploadLimits)
    # Load the model zoo (and torch) at start, for the API's first campaign check; a service
    # whose API is not served (bench.fleet) leaves it to the first use.
    preload_models: bool = True


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def allowed_hosts(bind: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
    """The Host header names the API answers to: the bind address (and the loopback names when
    bound to loopback; this machine's names and addresses when bound to every interface), plus
    ``extra`` (``--allow-host``)."""
    names: list[str] = [bind]
    if _is_loopback(bind):
        names += LOOPBACK_HOSTS
    elif bind in ("0.0.0.0", "::", ""):
        names += [*LOOPBACK_HOSTS, socket.gethostname(), socket.getfqdn()]
        for addresses in psutil.net_if_addrs().values():
            names += [a.address.split("%", 1)[0] for a in addresses
                      if a.family in (socket.AF_INET, socket.AF_INET6)]  # fmt: skip
    names += extra
    return tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))


def _load_model_zoo() -> None:
    try:
        importlib.import_module("host.models.zoo")
        importlib.import_module("host.models.hf")
    except Exception:  # the first check that needs them reports what is wrong
        logger.exception("could not load the model zoo")


class Service:
    """Starts the fleet side and the background loops; :meth:`serve` runs the API until stopped."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.owner = default_owner()
        self.store = Store(config.db)
        self.home = config.home.expanduser()
        self.fleet = Fleet(
            config.broker, config.base_topic, store=self.store, tls=config.tls,
            signing_key=config.signing_key, client_id=f"edgetailor-serve-{self.owner}"[:64],
            share_group=config.share_group,
        )  # fmt: skip
        self.bus = EventBus()
        self.driver = DeploymentDriver(self.store, self.fleet, owner=self.owner)
        self.campaigns = CampaignJobs(
            self.store, self.fleet, self.owner, policy=ReferencePolicy.for_api(config.allow_modules)
        )
        self.searches = SearchWorkers(self.store, self.fleet, self.owner, self.home / "searches")
        self.watcher = ChangeWatcher(self.store, self.bus)
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ctx = ApiContext(
            store=self.store, artifact_dir=self.home / "artifacts", fleet=self.fleet,
            bus=self.bus, work_root=self.home / "campaigns", open_reads=config.open_reads,
            allowed_hosts=allowed_hosts(config.host, config.allow_hosts),
            allowed_modules=config.allow_modules, upload_limits=config.upload_limits,
        )  # fmt: skip
        self.app = create_app(self.ctx)

    def ensure_token(self) -> str | None:
        """Make an admin token on the first start (or, with ``--new-token``, one that replaces
        every other token); it is printed once, here."""
        sstore = ServiceStore(self.store)
        if sstore.has_token() and not self.config.new_token:
            return None
        token = sstore.new_token(Scope.ADMIN, name="serve", revoke_others=self.config.new_token)
        sys.stderr.write(
            "\nAPI token, scope admin (shown this once; the database keeps only its hash):\n"
            f"    {token}\n"
            "Give it to clients as `--token` or EDGETAILOR_TOKEN; `edgetailor token create "
            "--scope read|operate|admin` makes more, `edgetailor serve --new-token` replaces "
            "them all.\n\n"
        )
        sys.stderr.flush()
        return token

    def start(self) -> None:
        self.ensure_token()
        # The model zoo (and torch) load in seconds: load them now, so that the first campaign
        # the API checks is answered as fast as the next.
        if self.config.preload_models:
            threading.Thread(target=_load_model_zoo, name="load-model-zoo", daemon=True).start()
        self.fleet.connect()
        # Beside a large fleet the SUBACKs queue behind every retained status and birth.
        self.fleet.wait_synced(timeout=120, settle_s=0.5)
        for name, target in (
            ("deploy-driver", self._drive_forever),
            ("campaign-jobs", self.campaigns.run_forever),
            ("search-workers", self.searches.run_forever),
            ("event-watcher", self.watcher.run_forever),
        ):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        logger.info("service %s started on %s", self.owner, self.fleet.address)

    def _drive_forever(self) -> None:
        while not self._stop.wait(DRIVER_POLL_S):
            try:
                self.driver.step()
            except Exception:  # the loop outlives any one bad pass
                logger.exception("deployment driver pass failed")

    def stop(self) -> None:
        self._stop.set()
        self.campaigns.stop()
        self.searches.stop()
        self.watcher.stop()
        for thread in self._threads:
            if thread.name != "campaign-jobs":
                thread.join(timeout=5)
        self.fleet.close()
        self.store.close()

    def serve(self) -> None:
        """Start, run the API with uvicorn until SIGINT/SIGTERM, stop."""
        import uvicorn

        self.start()
        server = uvicorn.Server(
            uvicorn.Config(
                self.app, host=self.config.host, port=self.config.port,
                log_level=self.config.log_level, access_log=False,
            )
        )  # fmt: skip
        modules = ", ".join(self.config.allow_modules) or "none"
        sys.stderr.write(
            f"edgetailor serve: API on http://{self.config.host}:{self.config.port}"
            f" (OpenAPI at /docs), fleet on {self.fleet.address}, database "
            f"{self.store.safe_url()}; answers to Host {', '.join(self.ctx.allowed_hosts)}; "
            f"modules campaigns may name: {modules}"
            f"{'; reads open without a token' if self.config.open_reads else ''}\n"
        )
        sys.stderr.flush()
        try:
            server.run()
        finally:
            self.stop()
