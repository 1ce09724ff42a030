"""What the API's routers share, kept on ``app.state.ctx``: the store, the fleet (when the app runs
inside the service), the event bus, where uploaded artifacts go."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from host.api.live import EventBus
from host.store import Store


@dataclass
class ApiContext:
    store: Store
    artifact_dir: Path
    fleet: Any = None  # host.fleet.Fleet inside `edgetailor serve`; None serves the database only
    bus: EventBus = field(default_factory=EventBus)
    # Reads without a token from these client addresses only (mutations always need one).
    open_read_hosts: tuple[str, ...] = ("127.0.0.1", "::1", "localhost")
    work_root: Path | None = None
