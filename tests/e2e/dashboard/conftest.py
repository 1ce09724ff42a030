"""Browser fixtures: Playwright driving the system's headless Chromium, never a downloaded one.

`make test` installs Debian's ``chromium`` package with apt-get when it is missing (as root, with
apt). Where there is no Chromium the browser tests fail in CI (``CI`` set), which must run them,
and are skipped with the reason on a developer machine without it.

Every page gets a fresh browser profile; uncaught errors in the page fail the test; each test
leaves its screenshots under ``build/test-artifacts/dashboard/`` (``EDGETAILOR_TEST_ARTIFACTS``
to put them elsewhere), and a failing test a screenshot of where it stopped.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.serve import ServeProcess

REPO_ROOT = Path(__file__).resolve().parents[3]
CHROMIUM_ARGS = [
    "--no-sandbox",  # tests run as root in CI, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    # With no network beyond package registries, Chromium's own background requests would only
    # flood the log with refused connections.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1440, "height": 900}

# Whatever imports Playwright in this process must never fetch a browser.
os.environ.setdefault("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1")


def chromium_path() -> str | None:
    given = os.environ.get("EDGETAILOR_CHROMIUM")
    if given:
        return given if Path(given).is_file() else None
    for name in ("/usr/bin/chromium", "/usr/bin/chromium-browser"):
        if Path(name).is_file():
            return name
    return shutil.which("chromium")


@pytest.fixture(scope="session")
def chromium() -> str:
    path = chromium_path()
    if path is not None:
        return path
    why = (
        "no Chromium at /usr/bin/chromium: `make test` installs Debian's package with apt-get "
        "when run as root (or: apt-get install chromium; EDGETAILOR_CHROMIUM=PATH for another)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"the browser tests must run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    root = Path(os.environ.get("EDGETAILOR_TEST_ARTIFACTS", REPO_ROOT / "build" / "test-artifacts"))
    out = root / "dashboard"
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="session")
def playwright_driver() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as driver:
        yield driver


@dataclass
class Browser:
    """One page in a fresh profile, the errors it logged, and where its screenshots go."""

    page: Any
    artifacts: Path
    errors: list[str] = field(default_factory=list)

    def shot(self, name: str) -> Path:
        path = self.artifacts / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path


@pytest.fixture
def browser(
    playwright_driver: Any, chromium: str, artifacts_dir: Path, request: pytest.FixtureRequest
) -> Iterator[Browser]:
    profile = tempfile.mkdtemp(prefix="et-chromium-")
    context = playwright_driver.chromium.launch_persistent_context(
        profile, executable_path=chromium, headless=True, args=CHROMIUM_ARGS, viewport=VIEWPORT,
    )  # fmt: skip
    page = context.pages[0] if context.pages else context.new_page()
    page.set_default_timeout(30_000)
    opened = Browser(page, artifacts_dir)
    page.on("pageerror", lambda exc: opened.errors.append(f"uncaught: {exc}"))
    page.on(
        "console",
        lambda msg: opened.errors.append(f"console: {msg.text}") if msg.type == "error" else None,
    )
    try:
        yield opened
        # A request the test provoked to fail (a refused token) logs a console error too; an
        # uncaught exception is always a defect of the page.
        assert not [e for e in opened.errors if e.startswith("uncaught")], opened.errors
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            page.screenshot(path=str(artifacts_dir / f"{request.node.name}-failed.png"))
        context.close()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


@pytest.fixture
def serve(shared_broker_url: str, base_topic: str, tmp_path: Path) -> Iterator[ServeProcess]:
    """The service, allowing campaigns to name the test's search spaces (tests/e2e/dashboard/
    spaces.py) as an operator allows their own package."""
    process = ServeProcess(
        shared_broker_url, base_topic, f"sqlite:///{tmp_path / 'host.db'}", tmp_path / "home",
        "--allow-module", "tests.e2e.dashboard.spaces",
    )  # fmt: skip
    yield process
    process.stop()
