"""`edgetailor token create|list|revoke` on both stores: a token is printed once, listed by id and
scope (never itself), does what its scope allows through the API and nothing more, and is refused
from the moment it is revoked."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from host.api import ApiContext, create_app
from host.store import Store
from tests.e2e.conftest import cli_env

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]


def _token_cmd(db_url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*CLI, "token", *args, "--db", db_url],
        capture_output=True, text=True, timeout=120, env=cli_env(),
    )  # fmt: skip


@pytest.fixture
def api(db_url: str, tmp_path: Path) -> Iterator[TestClient]:
    with Store(db_url) as store:
        app = create_app(ApiContext(store=store, artifact_dir=tmp_path / "artifacts"))
        with TestClient(app, base_url="http://127.0.0.1") as client:
            yield client


def test_a_token_made_with_the_cli_does_what_its_scope_allows_until_it_is_revoked(
    db_url: str, api: TestClient
) -> None:
    made = _token_cmd(db_url, "create", "--scope", "read", "--name", "grafana")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()  # stdout is the token alone, for `$(edgetailor token create)`
    assert token.startswith("et_") and "\n" not in token and "(read)" in made.stderr
    headers = {"Authorization": f"Bearer {token}"}
    assert api.get("/api/v1/devices", headers=headers).status_code == 200
    acting = api.post("/api/v1/campaigns/c-1/cancel", headers=headers)
    assert acting.status_code == 403 and acting.json()["error"]["code"] == "insufficient_scope"

    listed = _token_cmd(db_url, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    [entry] = json.loads(listed.stdout)
    assert entry["scope"] == "read" and entry["name"] == "grafana" and entry["revoked"] is None
    assert token not in listed.stdout + listed.stderr

    revoked = _token_cmd(db_url, "revoke", entry["token_id"])
    assert revoked.returncode == 0 and "revoked" in revoked.stdout
    assert api.get("/api/v1/devices", headers=headers).status_code == 403
    assert json.loads(_token_cmd(db_url, "list", "--json").stdout) == []
    with_revoked = json.loads(_token_cmd(db_url, "list", "--json", "--revoked").stdout)
    assert with_revoked[0]["revoked"] is not None


def test_a_bad_scope_or_an_unknown_token_id_is_one_line_exit_2(db_url: str) -> None:
    bad = _token_cmd(db_url, "create", "--scope", "root")
    assert bad.returncode == 2 and "root" in bad.stderr and bad.stdout == ""
    unknown = _token_cmd(db_url, "revoke", "0123456789abcdef")
    assert unknown.returncode == 2
    [line] = [t for t in unknown.stderr.splitlines() if t.startswith("error:")]
    assert "0123456789abcdef" in line and "token list" in line
