"""What the API's routers share, kept on ``app.state.ctx``: the store, the fleet (when the app runs
inside the service), the event bus, where uploaded artifacts go, and what the operator allows
callers (modules, host names, open reads, upload sizes)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.api.live import EventBus
from host.artifacts import UploadLimits
from host.store import Store

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass
class ApiContext:
    store: Store
    artifact_dir: Path
    fleet: Any = None  # host.fleet.Fleet inside `edgetailor serve`; None serves the database only
    bus: EventBus = field(default_factory=EventBus)
    work_root: Path | None = None
    # Reads without a token (`serve --open-reads`); otherwise every /api route needs one.
    open_reads: bool = False
    # Host header names the API answers to (`serve --allow-host`); anything else is a 400, so a
    # page on another origin that rebinds its DNS name to this address reads nothing.
    allowed_hosts: tuple[str, ...] = LOOPBACK_HOSTS
    # Module prefixes whose code a campaign posted through the API may name
    # (`serve --allow-module PKG`); none by default.
    allowed_modules: tuple[str, ...] = ()
    upload_limits: UploadLimits = field(default_factory=UploadLimits)
