"""Acceptance: the dashboard follows a search live, in a real browser against `edgetailor serve`
(which joins a search queued through the API as a worker) with a real agent: trials appear as they
are decided, then the choice per device, measured on the board."""

from __future__ import annotations

import re
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import AgentFactory
from tests.e2e.dashboard.conftest import Browser
from tests.e2e.serve import ServeProcess

pytestmark = pytest.mark.slow

SEARCH_DEADLINE_MS = 420_000


def _expect() -> Any:
    from playwright.sync_api import expect

    return expect


def test_the_searches_page_follows_a_study_live_to_its_measured_choice(
    serve: ServeProcess, shared_broker_url: str, start_agent: AgentFactory, browser: Browser
) -> None:
    expect = _expect()
    start_agent("rig-s", shared_broker_url, extra_args=["--threads", "1"])
    serve.start()
    token = serve.token()
    api = httpx.Client(base_url=serve.url, timeout=30, headers={"Authorization": f"Bearer {token}"})
    body = {
        "model": "builtin:digits_cnn?width=0.5", "data": "builtin:digits", "devices": ["rig-s"],
        "constraints": ["accuracy_drop<=0.05"], "budget": 3, "trials": 4, "pretrain_epochs": 4,
        "recovery_epochs": 1, "runs": 10, "threads": [1], "precisions": ["fp32", "int8"],
        "max_prune": 0.5, "lowrank": False, "search_id": "s-page",
    }  # fmt: skip
    created = api.post("/api/v1/searches", json=body)
    assert created.status_code == 202, created.text
    page = browser.page
    page.goto(f"{serve.url}/#token={token}")
    page.click('nav a[data-nav="searches"]')
    expect(page.locator('table.searches tr[data-search="s-page"]')).to_have_count(1)
    page.click('table.searches a[href="#/searches/s-page"]')
    expect(page).to_have_url(re.compile(r"#/searches/s-page$"))
    page.evaluate(
        """() => {
        window.trialsSeen = [];
        new MutationObserver(() => {
          const n = document.querySelectorAll('table.trials tbody tr').length;
          if (window.trialsSeen.at(-1) !== n) window.trialsSeen.push(n);
        }).observe(document.body, {subtree: true, childList: true});
      }"""
    )
    badge = page.locator("section h1 + div .badge")
    expect(badge).to_have_attribute("data-status", "done", timeout=SEARCH_DEADLINE_MS)
    seen = page.evaluate("window.trialsSeen")
    assert any(0 < n < 4 for n in seen), seen  # trials showed up while the search ran
    panel = page.locator('section.search-device[data-device="rig-s"]')
    rows = panel.locator("table.trials tbody tr")
    expect(rows).to_have_count(4)
    doc = api.get("/api/v1/searches/s-page").json()
    chosen = doc["devices"]["rig-s"]["selection"]["chosen"]
    assert chosen and chosen in {r["candidate"] for r in doc["devices"]["rig-s"]["measured"]}
    expect(panel.locator(".choice strong")).to_have_text(chosen)
    expect(panel.locator(".choice")).to_contain_text("measured on the board")
    browser.shot("search-page")
