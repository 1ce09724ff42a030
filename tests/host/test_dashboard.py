"""The dashboard's server side over a real SQLite store: the page and every file it loads are served
without a token, under a content security policy, and fetch nothing from another host; a
campaign's panels are the report's own plot and table, drawn from the stored results, escaped,
404 for an unknown campaign and behind a token for every reader. The page itself runs in a
browser in tests/e2e/dashboard."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from host.api import ApiContext, create_app
from host.api.dashboard import STATIC_DIR
from host.campaign import CampaignSpec, campaign_selection
from host.report import pareto_svg
from host.security import Scope
from host.store import Store
from host.store.campaigns import CampaignStore
from host.store.service import ServiceStore
from tests.host.campaign_helpers import store_measured
from tests.host.test_report import HOSTILE, row

LOCAL = ("127.0.0.1", 50000)
BASE = "http://127.0.0.1:8000"
REMOTE = ("203.0.113.7", 50000)  # a documentation address: never contacted, only a label
SVG_NS = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as opened:
        yield opened


@pytest.fixture
def app(store: Store, tmp_path: Path) -> object:
    return create_app(ApiContext(store=store, artifact_dir=tmp_path / "artifacts"))


@pytest.fixture
def reader(store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {ServiceStore(store).new_token(Scope.READ)}"}


@pytest.fixture
def local(app: object, reader: dict[str, str]) -> Iterator[TestClient]:
    """A reader on this machine, with a read token."""
    with TestClient(app, client=LOCAL, base_url=BASE, headers=reader) as client:  # type: ignore[arg-type]
        yield client


@pytest.fixture
def remote(app: object) -> Iterator[TestClient]:
    """A reader on another machine, without a token."""
    with TestClient(app, client=REMOTE, base_url=BASE) as client:  # type: ignore[arg-type]
        yield client


def _measured_campaign(store: Store) -> None:
    """A campaign with three candidates measured on two devices, one recipe name hostile."""
    spec = CampaignSpec(
        model="builtin:digits_cnn", data="builtin:digits", devices=("pi4", "jetson"),
        constraints=("accuracy_drop<=0.02",), objective="min_latency",
    )  # fmt: skip
    cstore = CampaignStore(store)
    cstore.create_campaign("camp-d", spec.to_dict())
    cstore.update_campaign("camp-d", status="done", state={"devices": ["jetson", "pi4"]})
    rows = [
        row("c1", "pi4", 0.94, 12.0),
        row("c2", "pi4", 0.90, 8.0, recipe=HOSTILE),
        row("c3", "pi4", 0.95, 25.0),
        row("c1", "jetson", 0.94, 4.0),
        row("c2", "jetson", 0.93, 3.0, recipe=HOSTILE),
    ]
    for position, r in enumerate(rows):
        store_measured(store, "camp-d", r, position)


def _static_references(text: str) -> list[str]:
    return re.findall(r"""(?:src|href)="([^"]+)"|from "\./([^"]+)"|import\("\./([^"]+)"\)""", text)


def test_the_page_and_every_file_it_loads_are_served_without_a_token(remote: TestClient) -> None:
    page = remote.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    pending = [ref for refs in _static_references(page.text) for ref in refs if ref]
    pending = [r for r in pending if not r.startswith(("#", "data:"))]
    seen: set[str] = set()
    while pending:
        ref = pending.pop()
        url = ref if ref.startswith("dashboard/static/") else f"dashboard/static/{ref}"
        if url in seen:
            continue
        seen.add(url)
        response = remote.get(f"/{url}")
        assert response.status_code == 200, url
        if url.endswith(".js"):
            assert "javascript" in response.headers["content-type"], url
            pending += [ref for refs in _static_references(response.text) for ref in refs if ref]
    assert {"dashboard/static/main.js", "dashboard/static/fleet.js",
            "dashboard/static/dashboard.css"} <= seen  # fmt: skip


def test_no_dashboard_file_loads_anything_from_another_host() -> None:
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        # The SVG namespace is a name, not an address anything fetches.
        addresses = re.findall(r"""(?:https?:)?//[\w.-]+\.\w+""", text)
        assert [a for a in addresses if a != "http://www.w3.org"] == [], path.name
        assert "@import" not in text and "cdn" not in text.lower(), path.name


def test_the_dashboard_stays_out_of_the_openapi_document(local: TestClient) -> None:
    paths = local.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p == "/" or p.startswith("/dashboard")]


def test_campaign_panels_draw_the_reports_plot_and_table_from_the_stored_results(
    local: TestClient, store: Store
) -> None:
    _measured_campaign(store)
    response = local.get("/dashboard/campaigns/camp-d/panels")
    assert response.status_code == 200, response.text
    html = response.text
    sections = re.findall(r'<section class="device" id="dev-[^"]+" data-device="([^"]+)"', html)
    assert sections == ["jetson", "pi4"]

    rows, selections = campaign_selection(CampaignStore(store), "camp-d")
    expected = pareto_svg("pi4", [r for r in rows if r.device == "pi4"], selections["pi4"])
    assert expected in html  # the very SVG the report draws, not a second plot
    svg = ET.fromstring(expected)
    ringed = [
        g.get("data-candidate")
        for g in svg.iter(f"{SVG_NS}g")
        if any(c.get("class") == "chosen" for c in g.iter(f"{SVG_NS}circle"))
    ]
    assert ringed == [selections["pi4"].chosen_id] == ["c1"]
    # Every figure cell carries the number a table sorts by; the hostile recipe stays text.
    assert 'data-sort="12.0"' in html
    assert HOSTILE not in html and "&lt;script&gt;" in html
    assert '<tr class="chosen"><td>c1<span class="badge chosen">chosen</span>' in html


def test_campaign_panels_of_an_unknown_campaign_are_a_404_that_names_it(local: TestClient) -> None:
    response = local.get("/dashboard/campaigns/no-such/panels")
    assert response.status_code == 404
    assert "no-such" in response.json()["error"]["message"]


def test_the_page_and_its_files_carry_a_policy_that_allows_this_origin_only(
    remote: TestClient,
) -> None:
    for path in ("/", "/dashboard/static/main.js", "/dashboard/static/dashboard.css"):
        response = remote.get(path)
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy, path
        assert "unsafe-inline" not in policy and "frame-ancestors 'none'" in policy
        assert response.headers["x-content-type-options"] == "nosniff"
    page = remote.get("/").text
    assert "<script>" not in page and "style=" not in page  # nothing inline the policy would block


def test_campaign_panels_need_a_token_even_from_this_machine(
    remote: TestClient, app: object, store: Store
) -> None:
    _measured_campaign(store)
    assert remote.get("/dashboard/campaigns/camp-d/panels").status_code == 401
    with TestClient(app, client=LOCAL, base_url=BASE) as bare:  # type: ignore[arg-type]
        assert bare.get("/dashboard/campaigns/camp-d/panels").status_code == 401
    token = ServiceStore(store).new_token()
    allowed = remote.get(
        "/dashboard/campaigns/camp-d/panels", headers={"Authorization": f"Bearer {token}"}
    )
    assert allowed.status_code == 200 and "svg" in allowed.text
