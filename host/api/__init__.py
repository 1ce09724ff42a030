"""The REST API (FastAPI): an app factory, one router per domain, OpenAPI at ``/openapi.json``.

``create_app(ctx)`` builds the application over an :class:`ApiContext` (store, fleet, event bus);
``edgetailor serve`` runs it with uvicorn beside the fleet side (host.service). Everything is under
``/api/v1`` except ``/metrics`` (Prometheus), ``/healthz`` and the dashboard (``/``, see
host.api.dashboard). Mutating endpoints need the bearer token; reads are open to clients on the
same machine. Errors are ``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI

from host.api import dashboard, errors
from host.api.context import ApiContext
from host.api.deps import Ctx
from host.api.models import ServiceInfo
from host.api.routers import (
    artifacts,
    benchmarks,
    campaigns,
    deployments,
    devices,
    events,
    metrics,
    searches,
)

API_PREFIX = "/api/v1"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("edgetailor")
    except PackageNotFoundError:
        return "0+unknown"


def create_app(ctx: ApiContext) -> FastAPI:
    __version__ = _version()
    app = FastAPI(
        title="edgetailor",
        version=__version__,
        description=(
            "Fit ML models to fleets of edge boards: devices, artifacts, campaigns, deployments "
            "(desired state in waves), live events (SSE) and Prometheus metrics."
        ),
    )
    app.state.ctx = ctx
    errors.install(app)
    for router in (devices.router, artifacts.router, campaigns.router, deployments.router,
                   benchmarks.router, events.router, searches.router):  # fmt: skip
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(metrics.router)
    dashboard.install(app)

    @app.get("/healthz", response_model=ServiceInfo, tags=["service"])
    def healthz(ctx: Ctx) -> dict[str, Any]:
        """The service is up; whether its broker connection is."""
        fleet = ctx.fleet
        return {
            "version": __version__,
            "fleet_connected": bool(fleet is not None and fleet.connected),
            "broker": str(fleet.address) if fleet is not None else None,
            "database": ctx.store.safe_url(),
        }

    return app


__all__ = ["API_PREFIX", "ApiContext", "create_app"]
