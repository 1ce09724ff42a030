"""The REST API (FastAPI): an app factory, one router per domain, OpenAPI at ``/openapi.json``.

``create_app(ctx)`` builds the application over an :class:`ApiContext` (store, fleet, event bus);
``edgetailor serve`` runs it with uvicorn beside the fleet side (host.service). Everything is under
``/api/v1`` except ``/metrics`` (Prometheus), ``/healthz`` and the dashboard (``/``, see
host.api.dashboard). Every route under ``/api`` and ``/metrics`` needs a bearer token whose scope
covers it (host.api.deps), from any address; ``/healthz`` says "ok" and nothing else. Requests
whose Host header the service does not answer to are refused before any route runs
(host.api.hygiene). Errors are ``{"error": {"code", "message", "fields"}}``.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import FastAPI

from host.api import dashboard, errors
from host.api.context import ApiContext
from host.api.deps import Ctx, Reader
from host.api.errors import AUTH_ERRORS
from host.api.hygiene import Hygiene
from host.api.models import Health, ServiceInfo
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
    app.add_middleware(Hygiene)
    errors.install(app)
    for router in (devices.router, artifacts.router, campaigns.router, deployments.router,
                   benchmarks.router, events.router, searches.router):  # fmt: skip
        app.include_router(router, prefix=API_PREFIX)
    app.include_router(metrics.router)
    dashboard.install(app)

    @app.get("/healthz", response_model=Health, tags=["service"])
    def healthz() -> dict[str, Any]:
        """The service answers (for load balancers and probes: nothing else, and no token)."""
        return {"status": "ok"}

    @app.get(f"{API_PREFIX}/service", response_model=ServiceInfo, tags=["service"],
             dependencies=[Reader], responses=AUTH_ERRORS)  # fmt: skip
    def service_info(ctx: Ctx) -> dict[str, Any]:
        """The service's version, whether its broker connection is up, its database."""
        fleet = ctx.fleet
        return {
            "version": __version__,
            "fleet_connected": bool(fleet is not None and fleet.connected),
            "broker": str(fleet.address) if fleet is not None else None,
            "database": ctx.store.safe_url(),
        }

    return app


__all__ = ["API_PREFIX", "ApiContext", "create_app"]
