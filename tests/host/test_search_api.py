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
from host.security import Scope
from host.store import Store
from host.store.service import ServiceStore

LOCAL = ("127.0.0.1", 50000)
BASE = "http://127.0.0.1"  # a Host the service answers to by default
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
        for device in ("pi-01", "pi-02", "pi-03"):
            opened.upsert_device(device, online=True)
        yield opened


@pytest.fixture
def ctx(store: Store, tmp_path: Path) -> ApiContext:
    return ApiContext(store=store, artifact_dir=tmp_path / "a", work_root=tmp_path / "campaigns")


@pytest.fixture
def token(store: Store) -> str:
    """An admin token, as `edgetailor serve` makes on its first start."""
    return ServiceStore(store).new_token()


@pytest.fixture
def local(ctx: ApiContext) -> Iterator[TestClient]:
    """A client on this machine that sends no token unless a request brings one."""
    with TestClient(create_app(ctx), client=LOCAL, base_url=BASE) as client:
        yield client


@pytest.fixture
def api(ctx: ApiContext, token: str) -> Iterator[TestClient]:
    """A client on this machine that sends the admin token with every request."""
    with TestClient(create_app(ctx), client=LOCAL, base_url=BASE, headers=auth(token)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_a_search_is_queued_for_the_service_and_read_back(api: TestClient, store: Store) -> None:
    created = api.post("/api/v1/searches", json=BODY)
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
    listed = api.get("/api/v1/searches").json()
    assert [s["search_id"] for s in listed] == ["s-api"] and listed[0]["trials"] == 1
    doc = api.get("/api/v1/searches/s-api").json()
    trial = doc["devices"]["pi-01"]["trials"][0]
    assert trial["decision"] == "skipped" and trial["prediction"]["latency_p90_ms"] == 2.0
    assert doc["devices"]["pi-02"]["trials"] == []
    assert doc["devices"]["pi-01"]["selection"]["chosen"] is None  # nothing measured: no choice


def test_the_search_routes_ask_for_a_token_of_the_right_scope_and_an_allowed_host(
    local: TestClient, ctx: ApiContext, store: Store
) -> None:
    assert local.post("/api/v1/searches", json=BODY).status_code == 401
    assert local.get("/api/v1/searches").status_code == 401
    assert local.get("/api/v1/searches/s-api").status_code == 401
    reader = auth(ServiceStore(store).new_token(Scope.READ))
    refused = local.post("/api/v1/searches", json=BODY, headers=reader)
    assert refused.status_code == 403, refused.text
    assert local.get("/api/v1/searches", headers=reader).json() == []
    operator = auth(ServiceStore(store).new_token(Scope.OPERATE))
    with TestClient(create_app(ctx), client=LOCAL) as elsewhere:  # Host: testserver
        stray = elsewhere.post("/api/v1/searches", json=BODY, headers=operator)
        assert stray.status_code == 400, stray.text
    assert SearchStore(store).list_searches() == []
    assert local.post("/api/v1/searches", json=BODY, headers=operator).status_code == 202


@pytest.mark.parametrize(
    ("change", "status", "named"),
    [
        ({"constraints": ["latency_p90_ms<=5@pi-03"]}, 422, "pi-03"),  # known, not searched
        ({"constraints": ["latency_p90_ms<=5@pi-09"]}, 404, "pi-09"),  # never seen
        ({"devices": ["pi-01", "pi-09"]}, 404, "pi-09"),
        ({"devices": [""]}, 422, "devices"),
        ({"constraints": ["latency_p90_ms<=1e999"]}, 422, "constraints"),
        ({"precisions": ["int4"]}, 422, "precisions"),
        ({"runtimes": ["tensorrt"]}, 422, "runtimes"),
        ({"students": [1.5]}, 422, "students"),
        ({"search_id": "../x"}, 422, "search_id"),
        ({"objective": "fastest"}, 422, "objective"),
        ({"budget": 0}, 422, "budget"),
        ({"surprise": 1}, 422, "surprise"),
        ({"model": "builtin:no_such_model"}, 404, "no_such_model"),
        ({"data": "builtin:no_such_data"}, 404, "no_such_data"),
        ({"model": "/etc/passwd"}, 403, "/etc/passwd"),
    ],
)
def test_a_bad_search_is_refused_with_one_clear_message_and_stores_nothing(
    api: TestClient, store: Store, change: dict[str, object], status: int, named: str
) -> None:
    bad = api.post("/api/v1/searches", json={**BODY, **change})
    assert bad.status_code == status, bad.text
    message = bad.json()["error"]["message"]
    assert named in message and "\n" not in message
    assert SearchStore(store).list_searches() == []


def test_a_clashing_search_id_is_a_conflict_and_an_unknown_one_is_not_found(
    api: TestClient,
) -> None:
    assert api.post("/api/v1/searches", json=BODY).status_code == 202
    assert api.post("/api/v1/searches", json=BODY).status_code == 202  # same spec: joins it
    clash = api.post("/api/v1/searches", json={**BODY, "budget": 5})
    assert clash.status_code == 409
    missing = api.get("/api/v1/searches/nope")
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
