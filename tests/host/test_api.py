"""The REST API over both stores (SQLite and PostgreSQL): every endpoint, tokens and their scopes,
the Host allow-list, unknown ids, invalid bodies, what a campaign may name and what a deploy may
send, server-sent events and Prometheus metrics. The fleet is absent here (the API reads and
writes the database); the service with real agents is in tests/e2e/test_service_deploy.py, and
schemathesis against a live `edgetailor serve` in tests/e2e/test_service_schema.py."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from fastapi.testclient import TestClient

from host.api import ApiContext, create_app
from host.api.live import ChangeWatcher
from host.deploy import DeploymentDriver
from host.security import Scope
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo
from host.store.service import ServiceStore
from tests.host.fake_fleet import FakeFleet
from tests.host.fleet_helpers import sample_birth

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)  # a documentation address: never contacted, only a label
BASE = "http://127.0.0.1"  # a Host the service answers to by default


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as opened:
        yield opened


@pytest.fixture
def ctx(store: Store, tmp_path: Path) -> ApiContext:
    return ApiContext(store=store, artifact_dir=tmp_path / "artifacts", work_root=tmp_path / "c")


@pytest.fixture
def token(store: Store) -> str:
    """An admin token, as `edgetailor serve` makes on its first start."""
    return ServiceStore(store).new_token()


@pytest.fixture
def local(ctx: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx), client=LOCAL, base_url=BASE) as client:
        yield client


@pytest.fixture
def remote(ctx: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx), client=REMOTE, base_url=BASE) as client:
        yield client


@pytest.fixture
def api(ctx: ApiContext, token: str) -> Iterator[TestClient]:
    """A client on this machine that sends the admin token with every request."""
    with TestClient(create_app(ctx), client=LOCAL, base_url=BASE, headers=auth(token)) as client:
        yield client


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _device(store: Store, device_id: str, *, online: bool = True) -> None:
    import msgspec

    birth = msgspec.to_builtins(sample_birth())
    store.upsert_device(device_id, online=online, birth=birth)
    store.upsert_device(
        device_id, telemetry={"cpu_percent": 3.0, "mem_used_mb": 100.0, "mem_total_mb": 900.0,
                              "agent_rss_mb": 28.0, "active_sha256": None},
    )  # fmt: skip
    if not online:
        store.upsert_device(device_id, online=False)


def _upload(client: TestClient, token: str, content: bytes, name: str) -> dict[str, Any]:
    """Store a file through the API (``token`` empty: the client's own default header)."""
    response = client.post(
        "/api/v1/artifacts", params={"filename": name}, content=content,
        headers=auth(token) if token else None,
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()


READS = [
    "/api/v1/devices", "/api/v1/devices/pi-1", "/api/v1/status", "/api/v1/artifacts",
    "/api/v1/campaigns", "/api/v1/deployments", "/api/v1/jobs/j-1", "/api/v1/service",
    "/metrics", "/dashboard/campaigns/c-1/panels",
]  # fmt: skip


@pytest.mark.parametrize("path", READS)
def test_every_read_needs_a_valid_token_even_from_loopback(
    local: TestClient, remote: TestClient, store: Store, path: str
) -> None:
    _device(store, "pi-1")
    reader = ServiceStore(store).new_token(Scope.READ)
    for client in (local, remote):
        missing = client.get(path)
        assert missing.status_code == 401, path
        assert "Authorization: Bearer" in missing.json()["error"]["message"]
        assert missing.headers["www-authenticate"] == "Bearer"
        assert client.get(path, headers=auth("et_wrong")).status_code == 403, path
        assert client.get(path, headers=auth(reader)).status_code in (200, 404), path


def test_reads_without_a_token_only_when_the_operator_opens_them(
    ctx: ApiContext, store: Store
) -> None:
    _device(store, "pi-1")
    ctx.open_reads = True
    with TestClient(create_app(ctx), client=REMOTE, base_url=BASE) as client:
        assert client.get("/api/v1/devices").json()[0]["device_id"] == "pi-1"
        refused = client.post("/api/v1/campaigns/c-1/cancel")
        assert refused.status_code == 401  # mutations still need a token
        assert client.get("/api/v1/devices", headers=auth("et_wrong")).status_code == 403


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("post", "/api/v1/campaigns"),
        ("post", "/api/v1/campaigns/c-1/cancel"),
        ("post", "/api/v1/deployments"),
        ("post", "/api/v1/deployments/roll-1/rollback"),
        ("post", "/api/v1/deployments/roll-1/cancel"),
        ("post", "/api/v1/devices/pi-1/rollback"),
        ("post", "/api/v1/artifacts?filename=m.tflite"),
        ("post", "/api/v1/benchmarks"),
    ],
)
def test_every_mutation_needs_an_operate_token_even_from_loopback(
    local: TestClient, store: Store, token: str, method: str, path: str
) -> None:
    missing = getattr(local, method)(path, json={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = getattr(local, method)(path, json={}, headers=auth(token + "x"))
    assert wrong.status_code == 403 and missing.headers.get("www-authenticate") == "Bearer"
    reader = ServiceStore(store).new_token(Scope.READ)
    small = getattr(local, method)(path, json={}, headers=auth(reader))
    assert small.status_code == 403 and small.json()["error"]["code"] == "insufficient_scope"
    assert "edgetailor token create --scope operate" in small.json()["error"]["message"]
    operator = ServiceStore(store).new_token(Scope.OPERATE)
    assert getattr(local, method)(path, json={}, headers=auth(operator)).status_code not in (
        401, 403,
    )  # fmt: skip


def test_a_token_is_stored_hashed_with_its_scope_and_a_new_one_can_revoke_the_others(
    store: Store,
) -> None:
    sstore = ServiceStore(store)
    first = sstore.new_token(Scope.OPERATE, name="ci")
    with store.read() as session:
        stored = session.execute(sqlalchemy.text("SELECT sha256, scope, name FROM api_tokens"))
        rows = [tuple(row) for row in stored]
    assert first not in {row[0] for row in rows} and rows[0][1:] == ("operate", "ci")
    assert sstore.token_scope(first) is Scope.OPERATE
    second = sstore.new_token(revoke_others=True)
    assert sstore.token_scope(second) is Scope.ADMIN and sstore.token_scope(first) is None
    [listed] = sstore.list_tokens()
    assert listed.scope is Scope.ADMIN and listed.revoked is None
    sstore.revoke_token(listed.token_id)
    assert sstore.token_scope(second) is None and sstore.list_tokens() == []


def test_a_token_stored_before_scopes_existed_keeps_the_power_it_had(store: Store) -> None:
    sstore = ServiceStore(store)
    token = sstore.new_token(Scope.READ)
    with store.transaction() as session:  # as an earlier version wrote it: no scope column set
        session.execute(sqlalchemy.text("UPDATE api_tokens SET scope = NULL, name = NULL"))
    assert sstore.token_scope(token) is Scope.ADMIN
    assert [t.scope for t in sstore.list_tokens()] == [Scope.ADMIN]


@pytest.mark.parametrize("path", ["/healthz", "/api/v1/devices", "/", "/openapi.json"])
def test_a_foreign_host_header_is_refused_before_any_route_runs(
    ctx: ApiContext, token: str, path: str
) -> None:
    with TestClient(create_app(ctx), client=LOCAL, base_url="http://evil.example") as client:
        refused = client.get(path, headers=auth(token))
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "bad_host"
    assert "--allow-host" in refused.json()["error"]["message"]
    for base in ("http://localhost:8000", "http://[::1]:8000", "http://127.0.0.1:8000"):
        with TestClient(create_app(ctx), client=LOCAL, base_url=base) as client:
            assert client.get(path, headers=auth(token)).status_code == 200, base
    ctx.allowed_hosts = ("edge.example.org",)
    with TestClient(create_app(ctx), base_url="http://edge.example.org") as client:
        assert client.get(path, headers=auth(token)).status_code == 200


def test_healthz_says_ok_and_nothing_else_and_the_service_details_need_a_token(
    local: TestClient, token: str
) -> None:
    assert local.get("/healthz").json() == {"status": "ok"}
    assert local.get("/api/v1/service").status_code == 401
    doc = local.get("/api/v1/service", headers=auth(token)).json()
    assert doc["fleet_connected"] is False and doc["database"].startswith(("sqlite", "postgresql"))


def test_a_method_a_route_does_not_take_is_a_405_with_the_methods_it_takes(
    local: TestClient, token: str
) -> None:
    for method, path, allowed in [
        ("TRACE", "/healthz", "GET"),
        ("DELETE", "/api/v1/devices", "GET"),
        ("PUT", "/api/v1/artifacts", "GET, POST"),
    ]:
        response = local.request(method, path, headers=auth(token))
        assert response.status_code == 405, (method, path)
        assert set(response.headers["allow"].split(", ")) == set(allowed.split(", "))


def test_unknown_ids_are_404s_that_name_the_id(api: TestClient, token: str) -> None:
    for path, ident in [
        ("/api/v1/devices/pi-404", "pi-404"),
        ("/api/v1/artifacts/" + "a" * 64, "a" * 64),
        ("/api/v1/artifacts/" + "b" * 64 + "/download", "b" * 64),
        ("/api/v1/campaigns/camp-404", "camp-404"),
        ("/api/v1/campaigns/camp-404/results", "camp-404"),
        ("/api/v1/campaigns/camp-404/selection", "camp-404"),
        ("/api/v1/deployments/roll-404", "roll-404"),
        ("/api/v1/jobs/job-404", "job-404"),
    ]:
        response = api.get(path, headers=auth(token))
        assert response.status_code == 404, path
        assert ident in response.json()["error"]["message"], path


def test_invalid_bodies_are_422s_that_name_the_field(api: TestClient, token: str) -> None:
    bad = api.post("/api/v1/campaigns", json={"model": "builtin:x", "runs": 0},
                     headers=auth(token))  # fmt: skip
    assert bad.status_code == 422
    fields = {f["field"] for f in bad.json()["error"]["fields"]}
    assert {"body.data", "body.runs"} <= fields
    for body, field in [
        ({"model": "m", "data": "d", "constraints": ["speed>=fast"]}, "body.constraints.0"),
        ({"model": "m", "data": "d", "objective": "fastest"}, "body.objective"),
        ({"model": "m", "data": "d", "devices": ["_x"]}, "body.devices.0"),
        ({"model": "m", "data": "d", "campaign_id": "-x"}, "body.campaign_id"),
    ]:
        refused = api.post("/api/v1/campaigns", json=body, headers=auth(token))
        assert refused.status_code == 422, body
        assert field in {f["field"] for f in refused.json()["error"]["fields"]}, refused.text
    extra = api.post("/api/v1/deployments", json={"sha256": "x", "wavez": "1"},
                       headers=auth(token))  # fmt: skip
    assert {f["field"] for f in extra.json()["error"]["fields"]} == {
        "body.sha256.sha256", "body.sha256.wavez", "body.sha256.devices",
    }  # fmt: skip
    for both in ({"sha256": "a" * 64, "campaign_id": "c"}, {}):
        refused = api.post("/api/v1/deployments", json=both, headers=auth(token))
        assert refused.status_code == 422 and "exactly one of" in refused.json()["error"]["message"]
    waves = api.post("/api/v1/deployments", json={"targets": [], "waves": "x%"},
                       headers=auth(token))  # fmt: skip
    assert waves.status_code == 422
    assert {f["field"] for f in waves.json()["error"]["fields"]} == {
        "body.targets.targets", "body.targets.waves",
    }  # fmt: skip


def test_an_uploaded_artifact_is_listed_described_and_downloaded_byte_for_byte(
    api: TestClient, token: str, tmp_path: Path
) -> None:
    import numpy as np

    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    content = (tmp_path / "eval.npz").read_bytes()
    manifest = _upload(api, token, content, "eval.npz")
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert manifest["format"] == "npz" and manifest["name"] == "eval"
    listed = api.get("/api/v1/artifacts").json()
    assert [a["sha256"] for a in listed] == [manifest["sha256"]] and listed[0]["downloadable"]
    assert api.get(f"/api/v1/artifacts/{manifest['sha256']}").json()["size_bytes"] == len(content)
    assert api.get(f"/api/v1/artifacts/{manifest['sha256']}/download").content == content
    broken = api.post("/api/v1/artifacts", params={"filename": "m.tflite"}, content=b"nope",
                        headers=auth(token))  # fmt: skip
    assert broken.status_code == 422 and "m.tflite is not a valid TFLite model" in broken.text
    assert str(tmp_path) not in broken.text  # the client's name for it, never a server path
    assert len(list((tmp_path / "artifacts").iterdir())) == 1  # nothing kept of the bad one
    named = api.post("/api/v1/artifacts", params={"filename": "../x.sh"}, content=b"x",
                       headers=auth(token))  # fmt: skip
    assert named.status_code == 422


def _model_bytes() -> bytes:
    return b"TFL3-not-parsed-by-the-api-when-given-a-stored-manifest"


def _stored_model(store: Store, tmp_path: Path) -> str:
    content = _model_bytes()
    path = tmp_path / "model.tflite"
    path.write_bytes(content)
    sha = hashlib.sha256(content).hexdigest()
    store.add_artifact(
        {"sha256": sha, "size_bytes": len(content), "format": "tflite", "precision": "fp32",
         "name": "model"}, str(path),
    )  # fmt: skip
    return sha


def test_a_deployment_is_created_with_waves_and_driven_to_its_devices(
    api: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    sha = _stored_model(store, tmp_path)
    for device in ("pi-1", "pi-2", "pi-3"):
        _device(store, device, online=device != "pi-3")
    created = api.post(
        "/api/v1/deployments",
        json={"sha256": sha, "devices": ["pi-1", "pi-2", "pi-3"], "waves": "1,100%",
              "offline_grace_s": 0},
        headers=auth(token),
    )  # fmt: skip
    assert created.status_code == 201, created.text
    doc = created.json()
    assert doc["waves"] == [["pi-1"], ["pi-2", "pi-3"]] and doc["status"] == "active"
    assert doc["counts"] == {"pending": 1, "waiting": 2}

    fleet = FakeFleet(store)
    fleet.online("pi-1")
    fleet.online("pi-2")
    driver = DeploymentDriver(store, fleet)
    for _ in range(4):
        driver.step()
    status = api.get(f"/api/v1/deployments/{doc['rollout_id']}").json()
    assert {d["device_id"]: d["state"] for d in status["devices"]} == {
        "pi-1": "committed", "pi-2": "committed", "pi-3": "pending",
    }  # fmt: skip
    assert [r["rollout_id"] for r in api.get("/api/v1/deployments").json()] == [doc["rollout_id"]]
    detail = api.get("/api/v1/devices/pi-3").json()
    assert detail["state"]["in_sync"] is False and "offline" in detail["state"]["reason"]
    assert detail["capabilities"]["arch"] == "aarch64"
    assert [h["kind"] for h in detail["history"]] == ["deploy"]
    status_rows = {r["device_id"]: r for r in api.get("/api/v1/status").json()}
    assert "offline" in status_rows["pi-3"]["state"]["reason"]

    cancelled = api.post(f"/api/v1/deployments/{doc['rollout_id']}/cancel", headers=auth(token))
    assert cancelled.json()["status"] == "cancelled"
    again = api.post(f"/api/v1/deployments/{doc['rollout_id']}/cancel", headers=auth(token))
    assert again.status_code == 409 and "not active" in again.json()["error"]["message"]
    rolled = api.post(f"/api/v1/deployments/{doc['rollout_id']}/rollback", headers=auth(token))
    assert rolled.json()["status"] == "rolled_back"
    for _ in range(3):
        driver.step()
    final = api.get(f"/api/v1/deployments/{doc['rollout_id']}").json()
    assert {d["device_id"]: d["state"] for d in final["devices"]} == {
        "pi-1": "reverted", "pi-2": "reverted", "pi-3": "skipped",
    }  # fmt: skip
    unknown = api.post("/api/v1/deployments", json={"sha256": "c" * 64, "devices": ["pi-1"]},
                         headers=auth(token))  # fmt: skip
    assert unknown.status_code == 404 and "c" * 64 in unknown.text


def _finished_campaign(store: Store, tmp_path: Path) -> None:
    cstore = CampaignStore(store)
    cstore.create_campaign("camp-1", {"model": "builtin:digits_cnn", "data": "builtin:digits",
                                      "constraints": [], "devices": ["pi-1"]})  # fmt: skip
    path = tmp_path / "cand.tflite"
    path.write_bytes(_model_bytes())
    cstore.put_candidate(CandidateInfo(
        campaign_id="camp-1", candidate_id="orig", position=0, recipe_name="orig", recipe=[],
        format="tflite", precision="fp32", status="ok", reason=None,
        sha256=hashlib.sha256(_model_bytes()).hexdigest(), path=str(path), size_bytes=10,
        host_metrics={"params": 10}, created=time.time(),
    ))  # fmt: skip
    cstore.update_campaign("camp-1", status="done", state={"work_dir": str(tmp_path)},
                           selection={"pi-1": {"candidate": "orig", "reason": "only one"}})  # fmt: skip


def test_campaigns_are_queued_listed_described_and_cancelled(
    api: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    _device(store, "pi-1")
    created = api.post(
        "/api/v1/campaigns",
        json={"model": "builtin:digits_cnn", "data": "builtin:digits", "space": "demo",
              "devices": ["pi-1"], "constraints": ["accuracy_drop<=0.02"],
              "campaign_id": "camp-q"},
        headers=auth(token),
    )  # fmt: skip
    assert created.status_code == 202, created.text
    assert created.json()["job"] == "queued" and created.json()["status"] == "created"
    conflict = api.post(
        "/api/v1/campaigns", json={"model": "builtin:other", "data": "builtin:digits",
                                   "campaign_id": "camp-q"}, headers=auth(token),
    )  # fmt: skip
    assert conflict.status_code == 409
    bad = api.post("/api/v1/campaigns", json={"model": "m", "data": "d",
                     "constraints": ["speed>=fast"]}, headers=auth(token))  # fmt: skip
    assert bad.status_code == 422 and "speed" in bad.json()["error"]["message"]
    cancelled = api.post("/api/v1/campaigns/camp-q/cancel", headers=auth(token))
    assert cancelled.json()["job"] == "cancelled"

    _finished_campaign(store, tmp_path)
    assert {c["campaign_id"] for c in api.get("/api/v1/campaigns").json()} == {"camp-q", "camp-1"}
    detail = api.get("/api/v1/campaigns/camp-1").json()
    assert detail["candidates"][0]["id"] == "orig" and detail["selection"]["pi-1"]["candidate"]
    assert api.get("/api/v1/campaigns/camp-1/results").json()["results"] == []
    assert "pi-1" in api.get("/api/v1/campaigns/camp-1/selection").json()["selection"]
    cli_run = api.post("/api/v1/campaigns/camp-1/cancel", headers=auth(token))
    assert cli_run.status_code == 409 and "CLI" in cli_run.json()["error"]["message"]

    deploy = api.post("/api/v1/deployments", json={"campaign_id": "camp-1"}, headers=auth(token))
    assert deploy.status_code == 201, deploy.text
    assert [d["label"] for d in deploy.json()["devices"]] == ["orig"]


def test_a_campaign_posted_with_task_metric_strict_and_eval_samples_stores_them_in_its_spec(
    api: TestClient, ctx: ApiContext, store: Store, token: str
) -> None:
    _device(store, "pi-1")
    ctx.allowed_modules = ("tests.taskmodels",)  # `serve --allow-module tests.taskmodels`
    created = api.post(
        "/api/v1/campaigns",
        json={"model": "tests.taskmodels:unnamed_encoder", "data": "tests.taskmodels:sentences",
              "devices": ["pi-1"], "task": "embedding", "metric": "tests.taskmodels:negative_distance",
              "strict": True, "eval_samples": 50, "campaign_id": "camp-task"},
        headers=auth(token),
    )  # fmt: skip
    assert created.status_code == 202, created.text
    spec = CampaignStore(store).get_campaign("camp-task").spec
    assert spec["task"] == "embedding" and spec["strict"] is True
    assert spec["metric"] == "tests.taskmodels:negative_distance" and spec["eval_samples"] == 50
    unknown = api.post(
        "/api/v1/campaigns", json={"model": "m", "data": "d", "task": "vision"},
        headers=auth(token),
    )  # fmt: skip
    assert unknown.status_code == 422
    assert {f["field"] for f in unknown.json()["error"]["fields"]} == {"body.task"}


def _campaigns_and_folders(store: Store, ctx: ApiContext) -> tuple[list[str], list[Path]]:
    root = ctx.work_root
    folders = list(root.iterdir()) if root is not None and root.exists() else []
    return [c.campaign_id for c in CampaignStore(store).list_campaigns()], folders


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("model", "os:system?command=touch%20/tmp/owned"),
        ("model", "subprocess:getoutput"),
        ("model", "/tmp/evil.py:build"),
        ("data", "/etc/passwd.npz"),
        ("data", "/etc"),
        ("data", "os:listdir"),
        ("space", "/tmp/space.json"),
        ("space", "os:environ"),
        ("metric", "os:system"),
        ("metric", "/tmp/evil.py:score"),
        ("weights", "/root/.ssh/id_rsa"),
    ],
)
def test_a_campaign_naming_a_module_not_allowed_or_a_server_path_is_403_and_leaves_nothing(
    api: TestClient, ctx: ApiContext, store: Store, field: str, value: str
) -> None:
    body = {"model": "builtin:digits_cnn", "data": "builtin:digits", "devices": ["all"]}
    refused = api.post("/api/v1/campaigns", json={**body, field: value})
    assert refused.status_code == 403, refused.text
    error = refused.json()["error"]
    assert error["code"] == "not_allowed"
    assert "--allow-module" in error["message"] or "edgetailor campaign" in error["message"]
    assert _campaigns_and_folders(store, ctx) == ([], [])
    assert not Path("/tmp/owned").exists()


def test_module_code_needs_a_module_the_operator_allowed_and_an_admin_token(
    api: TestClient, ctx: ApiContext, store: Store
) -> None:
    body = {"model": "tests.taskmodels:regressor", "data": "tests.taskmodels:regression_data",
            "devices": ["all"], "campaign_id": "camp-mod"}  # fmt: skip
    refused = api.post("/api/v1/campaigns", json=body)
    assert (
        refused.status_code == 403 and "--allow-module tests" in refused.json()["error"]["message"]
    )
    ctx.allowed_modules = ("tests.taskmodels",)
    operator = ServiceStore(store).new_token(Scope.OPERATE)
    small = api.post("/api/v1/campaigns", json=body, headers=auth(operator))
    assert small.status_code == 403 and small.json()["error"]["code"] == "insufficient_scope"
    assert _campaigns_and_folders(store, ctx) == ([], [])
    # An operate token may still run a campaign of builtins.
    builtins = {"model": "builtin:digits_cnn", "data": "builtin:digits", "devices": ["all"]}
    assert api.post("/api/v1/campaigns", json=builtins, headers=auth(operator)).status_code == 202
    assert api.post("/api/v1/campaigns", json=body).status_code == 202  # the admin token
    # A prefix allows its submodules, not its siblings.
    ctx.allowed_modules = ("tests.task",)
    again = api.post("/api/v1/campaigns", json={**body, "campaign_id": "camp-sib"})
    assert again.status_code == 403


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"devices": ["pi-1", "ghost-7"]}, "ghost-7"),
        ({"space": "no_such_space"}, "no_such_space"),
        ({"model": "builtin:no_such_net"}, "no_such_net"),
        ({"data": "builtin:cifar"}, "cifar"),
        ({"data": "artifact:" + "e" * 64}, "e" * 64),
    ],
)
def test_a_campaign_naming_what_the_service_lacks_is_a_404_and_leaves_nothing(
    api: TestClient, ctx: ApiContext, store: Store, change: dict[str, Any], named: str
) -> None:
    _device(store, "pi-1")
    body = {"model": "builtin:digits_cnn", "data": "builtin:digits", "devices": ["pi-1"]}
    refused = api.post("/api/v1/campaigns", json={**body, **change})
    assert refused.status_code == 404, refused.text
    assert named in refused.json()["error"]["message"]
    assert _campaigns_and_folders(store, ctx) == ([], [])


def test_a_campaign_may_take_an_uploaded_npz_as_its_data(
    api: TestClient, ctx: ApiContext, store: Store, tmp_path: Path
) -> None:
    import numpy as np

    np.savez(tmp_path / "d.npz", x=np.zeros((9, 1, 8, 8), np.float32), y=np.arange(9) % 3)
    sha = _upload(api, "", (tmp_path / "d.npz").read_bytes(), "d.npz")["sha256"]
    created = api.post("/api/v1/campaigns", json={
        "model": "builtin:digits_cnn", "data": f"artifact:{sha}", "campaign_id": "camp-up",
    })  # fmt: skip
    assert created.status_code == 202, created.text
    assert CampaignStore(store).get_campaign("camp-up").spec["data"] == f"artifact:{sha}"
    model = _stored_model(store, tmp_path)
    wrong = api.post("/api/v1/campaigns", json={
        "model": "builtin:digits_cnn", "data": f"artifact:{model}", "campaign_id": "camp-x",
    })  # fmt: skip
    assert wrong.status_code == 400 and "not an .npz" in wrong.json()["error"]["message"]


def test_a_deploy_of_an_artifact_of_the_wrong_kind_is_422_and_stores_no_rollout(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    import numpy as np

    _device(store, "pi-1")
    np.savez(tmp_path / "eval.npz", x=np.zeros((2, 4), np.float32))
    data = _upload(api, "", (tmp_path / "eval.npz").read_bytes(), "eval.npz")["sha256"]
    model = _stored_model(store, tmp_path)
    for body, field in [
        ({"sha256": data, "devices": ["pi-1"]}, "artifact"),
        ({"sha256": model, "devices": ["pi-1"], "eval_sha256": model}, "eval set"),
        ({"targets": [{"device_id": "pi-1", "sha256": data}]}, "artifact"),
    ]:
        refused = api.post("/api/v1/deployments", json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["error"]["code"] == "wrong_artifact_kind"
        assert refused.json()["error"]["message"].startswith(field)
    bench = api.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": data})
    assert bench.status_code == 422
    assert api.get("/api/v1/deployments").json() == []


def test_a_deploy_to_a_device_never_seen_is_404_unless_it_may_wait_until_first_seen(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    _device(store, "pi-1")
    sha = _stored_model(store, tmp_path)
    body = {"sha256": sha, "devices": ["pi-1", "pi-new"], "waves": "100%"}
    refused = api.post("/api/v1/deployments", json=body)
    assert refused.status_code == 404 and "pi-new" in refused.json()["error"]["message"]
    assert "pending_ok" in refused.json()["error"]["message"]
    assert api.get("/api/v1/deployments").json() == []
    created = api.post("/api/v1/deployments", json={**body, "pending_ok": True})
    assert created.status_code == 201, created.text
    rows = {r["device_id"]: r for r in api.get("/api/v1/status").json()}
    assert rows["pi-new"]["online"] is False
    assert rows["pi-new"]["state"]["reason"].startswith("pending until first seen")
    assert "pending until first seen" not in rows["pi-1"]["state"]["reason"]
    unknown_bench = api.post("/api/v1/benchmarks", json={"device_id": "pi-new", "sha256": sha})
    assert unknown_bench.status_code == 404


def test_device_rollback_without_a_broker_says_so(
    api: TestClient, store: Store, token: str
) -> None:
    _device(store, "pi-1")
    response = api.post("/api/v1/devices/pi-1/rollback", json={}, headers=auth(token))
    assert response.status_code == 503 and "no broker" in response.json()["error"]["message"]
    unknown = api.post("/api/v1/devices/pi-9/rollback", json={}, headers=auth(token))
    assert unknown.status_code == 404


def test_a_benchmark_names_an_unknown_artifact_and_without_a_broker_says_so(
    api: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    _device(store, "pi-1")
    unknown = api.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": "c" * 64},
                         headers=auth(token))  # fmt: skip
    assert unknown.status_code == 404 and "c" * 64 in unknown.json()["error"]["message"]
    sha = _stored_model(store, tmp_path)
    no_fleet = api.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": sha},
                          headers=auth(token))  # fmt: skip
    assert no_fleet.status_code == 503 and "no broker" in no_fleet.json()["error"]["message"]
    bad = api.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": sha, "runs": 0},
                     headers=auth(token))  # fmt: skip
    assert bad.status_code == 422
    assert {f["field"] for f in bad.json()["error"]["fields"]} == {"body.runs"}


def test_events_stream_device_and_deployment_changes_as_they_are_stored(
    api: TestClient, ctx: ApiContext, store: Store, tmp_path: Path, token: str
) -> None:
    watcher = ChangeWatcher(store, ctx.bus)
    watcher.poll()  # nothing yet
    with api.stream("GET", "/api/v1/events", params={"max_events": 3}) as stream:
        _device(store, "pi-1")
        sha = _stored_model(store, tmp_path)
        api.post("/api/v1/deployments", json={"sha256": sha, "devices": ["pi-1"]},
                   headers=auth(token))  # fmt: skip
        watcher.poll()
        events = _read_events(stream)
    assert [e["event"] for e in events] == ["device", "telemetry", "deployment"]
    assert events[0]["data"]["device_id"] == "pi-1" and events[0]["data"]["online"] is True
    assert events[1]["data"]["agent_rss_mb"] == 28.0
    assert events[2]["data"]["devices"] == {"pi-1": {"state": "pending", "stage": None}}
    replay = api.get("/api/v1/events", params={"max_events": 1, "types": "deployment"},
                       headers={"Last-Event-ID": "0"})  # fmt: skip
    assert [e["event"] for e in _parse(replay.text)] == ["deployment"]
    assert api.get("/api/v1/events", params={"types": "nope"}).status_code == 422


def _parse(text: str) -> list[dict[str, Any]]:
    out = []
    for block in text.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in block.splitlines() if line and not line.startswith(":")
        )
        if "event" in fields:
            out.append({"event": fields["event"], "id": int(fields["id"]),
                        "data": json.loads(fields["data"])})  # fmt: skip
    return out


def _read_events(stream: Any) -> list[dict[str, Any]]:
    return _parse("".join(stream.iter_text()))


def test_metrics_count_devices_jobs_deployments_and_result_latency(
    api: TestClient, store: Store, tmp_path: Path
) -> None:
    _device(store, "pi-1")
    _device(store, "pi-2", online=False)
    from host.commands import CommandStore, NewCommand
    from shared.manifest import ArtifactManifest
    from shared.messages import BenchmarkCmd
    from shared.results import BenchmarkResult, LatencyStats, TransferStats

    commands = CommandStore(store)
    model = ArtifactManifest(sha256="0" * 64, size_bytes=4096, format="tflite", precision="fp32")
    [job] = commands.add([NewCommand("pi-1", BenchmarkCmd(job_id="j1", model=model))])
    stats = LatencyStats(mean=1, std=0, min=1, p50=1, p90=1, p95=1, p99=1, max=1)
    result = BenchmarkResult(
        job_id="j1", model_sha256="0" * 64, backend="tflite", runtime="x", threads=1,
        size_bytes=4096, load_ms=1, warmup_runs=1, runs=1, latency_ms=stats, peak_rss_mb=1,
        rss_growth_mb=0, transfers=[TransferStats(sha256="0" * 64, already_stored=False)],
    )  # fmt: skip
    with store.transaction() as session:
        commands.store_final(session, job.command_id, response_msg_id="r1", status="ok",
                             state="answered", result=result, error_code=None,
                             error_message=None)  # fmt: skip
    store.add_artifact({"sha256": "0" * 64, "size_bytes": 4096, "format": "tflite",
                        "precision": "fp32"})  # fmt: skip
    text = api.get("/metrics").text
    assert "edgetailor_devices_online 1.0" in text
    assert 'edgetailor_jobs{kind="benchmark",state="answered"} 1.0' in text
    assert "edgetailor_result_latency_seconds_count 1.0" in text
    assert "edgetailor_transfer_bytes_total 4096.0" in text
    assert "edgetailor_deployment_targets" in text and "edgetailor_service_jobs" in text
