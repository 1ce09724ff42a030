"""Acceptance: `schemathesis run --checks all` against a live `edgetailor serve` (token given)
finds nothing: no server error, no read answered without a token, no schema looser or stricter
than the checks behind it, no 405 without its Allow header, no response off its schema.

The run is the command an operator types (from the repository root, which holds the
schemathesis.toml it reads), with fewer examples per operation so that it fits the suite; the
event stream never ends by itself and has its own tests in tests/host/test_api.py.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import cli_env
from tests.e2e.serve import ServeProcess

pytestmark = pytest.mark.slow

REPO_ROOT = Path(__file__).resolve().parents[2]
# Per operation and phase: the suite's budget (the coverage phase's cases do not depend on it and
# are most of the run); the operator's run takes schemathesis' default. One worker: hypothesis'
# lambda descriptions are not thread-safe on Python 3.11 (ast.parse raises SystemError).
EXAMPLES = 4


@pytest.fixture
def serve(shared_broker_url: str, base_topic: str, tmp_path: Path) -> Iterator[ServeProcess]:
    process = ServeProcess(
        shared_broker_url, base_topic, f"sqlite:///{tmp_path / 'host.db'}", tmp_path / "home"
    )
    yield process
    process.stop()


def test_schemathesis_with_every_check_finds_nothing_against_a_live_service(
    serve: ServeProcess, tmp_path: Path
) -> None:
    serve.start()
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file",
         str(REPO_ROOT / "schemathesis.toml"), "run", "--checks", "all",
         f"{serve.url}/openapi.json", "-H", f"Authorization: Bearer {serve.token()}",
         "--exclude-path", "/api/v1/events", "--max-examples", str(EXAMPLES),
         "--generation-database", "none", "--workers", "1", "--no-color"],
        cwd=REPO_ROOT, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    report = done.stdout + done.stderr
    assert done.returncode == 0, report[-6000:]
    tested = re.search(r"Tested: (\d+)", report)
    assert tested is not None and int(tested.group(1)) >= 24, report[-3000:]
