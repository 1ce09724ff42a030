"""The dashboard: a page served by the API's own app, with no build step and nothing fetched from
elsewhere at run time.

``static/`` holds the page (plain HTML, CSS and ES modules). It reads the REST API and the event
stream (``/api/v1/events``) and draws its sparklines itself; the per-device part of a campaign
(choice, Pareto plot, results table) comes from :func:`campaign_panels`, rendered by the same
templates and SVG code as the HTML report (host.report), so the two always agree.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles

from host.api.deps import Ctx, Reader
from host.api.errors import not_found

STATIC_DIR = Path(__file__).with_name("static")
STATIC_URL = "/dashboard/static"

# The page is not part of the API: it stays out of the OpenAPI document.
router = APIRouter(include_in_schema=False)


@router.get("/", response_class=FileResponse)
def index() -> FileResponse:
    """The page itself holds no data; what it shows comes through the API with the reader's
    rights, so serving it needs no token."""
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/dashboard/campaigns/{campaign_id}/panels", response_class=HTMLResponse,
            dependencies=[Reader])  # fmt: skip
async def campaign_panels(ctx: Ctx, campaign_id: str) -> HTMLResponse:
    """Per device: the choice and its reason, the Pareto plot, the results table (an HTML
    fragment; from the results so far while the campaign runs)."""
    from host.campaign import campaign_selection
    from host.report import device_panels_html
    from host.store.campaigns import CampaignStore

    cstore = CampaignStore(ctx.store)
    if cstore.get_campaign(campaign_id) is None:
        raise not_found("campaign", campaign_id, "list them with GET /api/v1/campaigns")

    def render() -> str:
        rows, selections = campaign_selection(cstore, campaign_id)
        return device_panels_html(rows, selections)

    return HTMLResponse(await run_in_threadpool(render), headers={"Cache-Control": "no-cache"})


def install(app: FastAPI) -> None:
    """Serve the page at ``/`` and its files under ``/dashboard/static``."""
    app.include_router(router)
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="dashboard-static")


__all__ = ["STATIC_DIR", "install", "router"]
