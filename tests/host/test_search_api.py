"""The search routes over a real SQLite store: queue a search for the service's workers, refuse a
bad spec or a clashing id, list, read one back with its trials and measured-vs-predicted figures,
and the live ``search`` event as its trials arrive."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from host.api import ApiContext, create_app
from host.api.live import ChangeWatcher
from host.search.store import SearchStore, TrialInfo
from host.store import Store
from host.store.service import ServiceStore

LOCAL = ("127.0.0.1", 50000)
BODY = {
    "model": "builtin:mlp",
    "data": "builtin:digits",
    "devices": ["pi-01", "pi-02"],
    "constraints": ["accuracy_drop<=0.02", "latency_p90_ms<=5@pi-01"],
    "budget": 4,
    "trials": 8,
    "search_id": "s-api",
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as opened:
        yield opened


@pytest.fixture
def ctx(store: Store, tmp_path: Path) -> ApiContext:
    return ApiContext(store=store, artifact_dir=tmp_path / "a", work_root=tmp_path / "campaigns")


@pytest.fixture
def client(ctx: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx), client=LOCAL) as opened:
        yield opened


def _auth(store: Store) -> dict[str, str]:
    return {"Authorization": f"Bearer {ServiceStore(store).new_token()}"}


def test_a_search_is_queued_for_the_service_and_read_back(client: TestClient, store: Store) -> None:
    assert client.post("/api/v1/searches", json=BODY).status_code == 401
    created = client.post("/api/v1/searches", json=BODY, headers=_auth(store))
    assert created.status_code == 202, created.text
    assert created.json()["search_id"] == "s-api" and created.json()["status"] == "created"
    stored = SearchStore(store).get_search("s-api")
    assert stored is not None and stored.state["service"] is True
    sstore = SearchStore(store)
    prediction = {"known": True, "latency_p90_ms": 2.0, "latency_interval": [1.5, 2.5]}
    sstore.put_trial(TrialInfo(
        search_id="s-api", device_id="pi-01", trial_number=0, params={"precision": "int8"},
        variant="v1", recipe=[{"technique": "int8"}], sha256=None, host={"metric_value": 0.95},
        prediction=prediction, decision="skipped", reason="predicted infeasible", worker="w",
        created=time.time(),
    ))  # fmt: skip
    listed = client.get("/api/v1/searches").json()
    assert [s["search_id"] for s in listed] == ["s-api"] and listed[0]["trials"] == 1
    doc = client.get("/api/v1/searches/s-api").json()
    trial = doc["devices"]["pi-01"]["trials"][0]
    assert trial["decision"] == "skipped" and trial["prediction"]["latency_p90_ms"] == 2.0
    assert doc["devices"]["pi-02"]["trials"] == []
    assert doc["devices"]["pi-01"]["selection"]["chosen"] is None  # nothing measured: no choice


def test_a_bad_search_is_refused_and_stores_nothing(client: TestClient, store: Store) -> None:
    headers = _auth(store)
    bad = client.post(
        "/api/v1/searches",
        json={**BODY, "constraints": ["latency_p90_ms<=5@pi-09"]},
        headers=headers,
    )
    assert bad.status_code == 400 and "pi-09" in bad.json()["error"]["message"]
    assert (
        client.post("/api/v1/searches", json={**BODY, "budget": 0}, headers=headers).status_code
        == 422
    )
    assert (
        client.post("/api/v1/searches", json={**BODY, "surprise": 1}, headers=headers).status_code
        == 422
    )
    assert SearchStore(store).list_searches() == []
    assert client.post("/api/v1/searches", json=BODY, headers=headers).status_code == 202
    clash = client.post("/api/v1/searches", json={**BODY, "budget": 5}, headers=headers)
    assert clash.status_code == 409
    missing = client.get("/api/v1/searches/nope")
    assert missing.status_code == 404 and "s-api" in missing.json()["error"]["message"]


def test_a_search_event_follows_its_trials(ctx: ApiContext, store: Store) -> None:
    sstore = SearchStore(store)
    sstore.create_search("s-live", {"devices": ["pi-01"]})
    watcher = ChangeWatcher(store, ctx.bus)
    watcher.poll()
    seen = [e for e in list(ctx.bus._history) if e.type == "search"]
    assert seen and seen[-1].data["search_id"] == "s-live"
    sstore.put_trial(TrialInfo(
        search_id="s-live", device_id="pi-01", trial_number=0, params={}, variant="v", recipe=[],
        sha256=None, host={}, prediction=None, decision="measured", reason="", worker="w",
        created=time.time(),
    ))  # fmt: skip
    watcher.poll()
    last = [e for e in list(ctx.bus._history) if e.type == "search"][-1]
    assert last.data["devices"]["pi-01"]["decisions"] == {"measured": 1}
