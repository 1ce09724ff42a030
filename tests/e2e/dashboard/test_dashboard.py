"""Acceptance: the dashboard in a real browser (Playwright driving the system's headless Chromium)
against `edgetailor serve` with real agents over real Mosquitto.

The fleet page lists the running agents and shows a killed one offline without being reloaded; a
campaign started from the page shows its progress live, then per device the Pareto chart with the
chosen point and the constraint line, and a sortable results table; deploying the choices from the
page makes every agent report the new active model; a page without a token asks for one before it
shows anything; a rollback asks for confirmation, and for a token that may do it when the
browser's only reads.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from host.security import Scope
from host.store import Store
from host.store.service import ServiceStore
from shared.hashing import sha256_file
from tests.e2e.conftest import AgentFactory
from tests.e2e.dashboard.conftest import Browser
from tests.e2e.serve import ServeProcess

pytestmark = pytest.mark.slow

SPACE = "tests.e2e.dashboard.spaces:THREE"  # a module the service under test allows
# Deadlines for what the page must show, not measurements: a loaded machine may take long.
CAMPAIGN_DEADLINE_MS = 420_000
DEPLOY_DEADLINE_MS = 240_000


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def _row(page: Any, device: str) -> Any:
    return page.locator(f'table.fleet tbody tr[data-device="{device}"]')


def test_the_fleet_page_lists_running_agents_and_shows_a_killed_one_offline_without_a_reload(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory, browser: Browser
) -> None:
    expect = _expect()
    agents = {d: start_agent(d, shared_broker_url) for d in ("dash-a", "dash-b")}
    serve.start()
    page = browser.page
    page.goto(f"{serve.url}/#token={serve.token()}")

    expect(page.locator("table.fleet tbody tr[data-device]")).to_have_count(2)
    for device in agents:
        expect(_row(page, device).locator("td.status .badge")).to_have_text("online")
        expect(_row(page, device).locator("td.runtimes")).to_contain_text("tflite")
        expect(_row(page, device).locator("td.desired")).to_contain_text("no deploy was ever")
    # Telemetry arrives every second; the CPU sparkline becomes a line once two samples are in.
    expect(_row(page, "dash-a").locator("td.cpu svg.spark polyline")).to_have_count(1)
    expect(page.locator("#live")).to_have_attribute("data-state", "live")
    browser.shot("fleet")

    page.evaluate("window.stillTheSamePage = true")
    agents["dash-b"].kill()  # SIGKILL: the broker publishes its Last Will
    expect(_row(page, "dash-b").locator("td.status .badge")).to_have_text("offline", timeout=20_000)
    expect(_row(page, "dash-a").locator("td.status .badge")).to_have_text("online")
    expect(_row(page, "dash-b").locator("button.rollback")).to_be_disabled()
    expect(page.locator("p.count")).to_have_text("2 devices, 1 online")
    assert page.evaluate("window.stillTheSamePage") is True  # the stream did it, not a reload
    browser.shot("fleet-one-offline")


def test_a_campaign_started_from_the_page_shows_progress_then_the_pareto_chart_and_deploys(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory, browser: Browser,
    tmp_path: Path,
) -> None:  # fmt: skip
    expect = _expect()
    devices = ("rig-1", "rig-2")
    agents = {d: start_agent(d, shared_broker_url, extra_args=["--threads", "1"]) for d in devices}
    serve.start()
    token = serve.token()
    page = browser.page

    # The address `edgetailor demo` prints: the page keeps the token and drops it from the URL.
    page.goto(f"{serve.url}/#token={token}")
    expect(page).to_have_url(re.compile(r"/#/fleet$"))
    expect(page.locator("table.fleet tbody tr[data-device]")).to_have_count(2)
    page.click('nav a[data-nav="campaigns"]')
    form = page.locator("form.new-campaign")
    for device in devices:  # online devices are ticked by default
        expect(form.locator(f'input[name="devices"][value="{device}"]')).to_be_checked()
    form.locator('input[name="space"]').fill(SPACE)
    form.locator('select[name="objective"]').select_option("min_latency")
    form.locator('textarea[name="constraints"]').fill("accuracy_drop<=0.02")
    form.locator('input[name="pretrain_epochs"]').fill("4")
    form.locator("details summary").click()
    form.locator('input[name="runs"]').fill("10")
    form.locator('input[name="min_s"]').fill("0.2")
    page.evaluate(
        """() => {
        window.progressSeen = [];
        new MutationObserver(() => {
          const text = document.querySelector('.progress-text');
          const badge = document.querySelector('section.campaign h1 .badge');
          const seen = `${badge ? badge.dataset.status : ''}|${text ? text.textContent : ''}`;
          if (window.progressSeen.at(-1) !== seen) window.progressSeen.push(seen);
        }).observe(document.body, {subtree: true, childList: true, characterData: true,
                                   attributes: true});
      }"""
    )
    form.locator('button[type="submit"]').click()

    expect(page).to_have_url(re.compile(r"#/campaigns/c-"))
    campaign_id = page.url.rsplit("/", 1)[-1]
    status = page.locator("section.campaign h1 .badge")
    expect(status).to_have_attribute("data-status", "done", timeout=CAMPAIGN_DEADLINE_MS)
    seen = page.evaluate("window.progressSeen")
    partial = [s for s in seen if re.search(r"\|[0-5] of 6 benchmarks finished", s)]
    assert partial, seen  # progress was shown while the benchmarks ran, not only at the end
    expect(page.locator(".progress-text")).to_have_text("6 of 6 benchmarks finished")

    api = httpx.Client(base_url=serve.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    detail = api.get(f"/api/v1/campaigns/{campaign_id}").json()
    sha_of = {c["id"]: c["sha256"] for c in detail["candidates"]}
    chosen = {d: detail["selection"][d]["candidate"] for d in devices}
    assert all(chosen.values()), detail["selection"]

    panels = page.locator("section.device")
    expect(panels).to_have_count(2)
    for device in devices:
        plot = page.locator(f'section.device[data-device="{device}"] svg.pareto')
        expect(plot.locator("g.point")).to_have_count(3)
        ringed = plot.locator("g.point:has(circle.chosen)")
        expect(ringed).to_have_count(1)
        expect(ringed).to_have_attribute("data-candidate", chosen[device])
        expect(plot.locator("text", has_text="accuracy_drop<=0.02")).to_have_count(1)
        expect(plot.locator('line[stroke-dasharray="5 4"]')).to_have_count(1)  # the line itself
        table = page.locator(f'section.device[data-device="{device}"] table.results')
        expect(table.locator("tbody tr.chosen td").first).to_contain_text(chosen[device])
        expect(table.locator("tbody tr")).to_have_count(3)

    # Sorting: by p90, ascending, then descending.
    table = page.locator(f'section.device[data-device="{devices[0]}"] table.results')
    p90_header = table.locator("thead th", has_text="p90")
    column = [t.strip() for t in table.locator("thead th").all_inner_texts()].index("p90")

    def p90s() -> list[float]:
        cells = table.locator(f"tbody tr td:nth-child({column + 1})")
        return [float(v) for v in cells.evaluate_all("cs => cs.map(c => c.dataset.sort)")]

    p90_header.click()
    expect(p90_header).to_have_attribute("aria-sort", "ascending")
    assert p90s() == sorted(p90s())
    p90_header.click()
    expect(p90_header).to_have_attribute("aria-sort", "descending")
    assert p90s() == sorted(p90s(), reverse=True)
    browser.shot("campaign")

    # Deploy the choices, through the confirmation.
    page.click("button.deploy")
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    for device in devices:
        expect(dialog.locator("ul.plan")).to_contain_text(f"{device} ← {chosen[device]}")
    dialog.locator('input[name="waves"]').fill("100%")
    dialog.locator("button.confirm").click()
    expect(page).to_have_url(re.compile(r"#/deployments$"))
    rollout = page.locator("article.rollout").first
    expect(rollout).to_have_attribute("data-status", "done", timeout=DEPLOY_DEADLINE_MS)
    for device in devices:
        expect(rollout.locator(f'tr[data-device="{device}"]')).to_have_attribute(
            "data-state", "committed"
        )

    # Each agent now reports the chosen model as its active one, and the fleet page shows it.
    page.click('nav a[data-nav="fleet"]')
    for device in devices:
        active = _row(page, device).locator("td.active")
        expect(active).to_have_attribute("data-sha256", sha_of[chosen[device]], timeout=30_000)
        expect(active.locator(".model")).to_have_text(chosen[device])
        expect(_row(page, device).locator("td.desired")).to_have_attribute("data-in-sync", "true")
        on_board = agents[device].data_dir / "active" / "model.tflite"
        assert sha256_file(on_board) == sha_of[chosen[device]]
    browser.shot("fleet-after-deploy")


def test_a_page_without_a_token_asks_for_one_before_it_shows_anything(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory, browser: Browser
) -> None:
    expect = _expect()
    start_agent("bare", shared_broker_url)
    serve.start()
    page = browser.page
    page.goto(f"{serve.url}/")
    asked = page.locator("#token-dialog")
    expect(asked).to_be_visible()
    expect(asked.locator(".why")).to_contain_text("needs an API token")
    expect(page.locator("table.fleet tbody tr[data-device]")).to_have_count(0)
    reader = ServiceStore(Store(serve.db)).new_token(Scope.READ)
    asked.locator('input[name="token"]').fill(reader)
    asked.locator('button[value="save"]').click()
    expect(_row(page, "bare").locator("td.status .badge")).to_have_text("online")


def test_a_rollback_from_the_page_is_confirmed_first_and_asks_for_a_token_that_may_do_it(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory, browser: Browser
) -> None:
    expect = _expect()
    start_agent("solo", shared_broker_url)
    serve.start()
    token = serve.token()
    reader = ServiceStore(Store(serve.db)).new_token(Scope.READ)  # looks, may not act
    page = browser.page
    sent: list[str] = []
    page.on("request", lambda r: sent.append(r.url) if "/rollback" in r.url else None)
    page.goto(f"{serve.url}/#token={reader}")

    button = _row(page, "solo").locator("button.rollback")
    button.click()
    dialog = page.locator("#confirm-dialog")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".title")).to_have_text("Roll back solo?")
    dialog.locator('button[value="cancel"]').click()
    expect(dialog).to_be_hidden()
    assert sent == []  # cancelled: nothing was asked of the service

    button.click()
    dialog.locator("button.confirm").click()
    asked = page.locator("#token-dialog")
    expect(asked).to_be_visible()  # the service refused: the token in this browser only reads
    expect(asked.locator(".why")).to_contain_text("needs a token with scope operate")
    asked.locator('input[name="token"]').fill(token)
    asked.locator('button[value="save"]').click()
    # Sent again with the token; the agent answers that it has nothing older to go back to.
    expect(page.locator(".notice.error")).to_contain_text("nothing_to_roll_back", timeout=60_000)
    assert len(sent) == 2
    expect(page.locator("#token-button")).to_have_text("API token ✓")
