"""The REST API over a real SQLite store: every endpoint, auth failures, unknown ids, invalid
bodies, server-sent events and Prometheus metrics; schemathesis against our own OpenAPI finds no
server error. The fleet is absent here (the API reads and writes the database); the service with
real agents is in tests/e2e/test_service_deploy.py."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from schemathesis.checks import not_a_server_error

from host.api import ApiContext, create_app
from host.api.live import ChangeWatcher
from host.deploy import DeploymentDriver
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo
from host.store.service import ServiceStore
from tests.host.fake_fleet import FakeFleet
from tests.host.fleet_helpers import sample_birth

LOCAL = ("127.0.0.1", 50000)
REMOTE = ("203.0.113.7", 50000)  # a documentation address: never contacted, only a label


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store(f"sqlite:///{tmp_path / 'host.db'}") as opened:
        yield opened


@pytest.fixture
def ctx(store: Store, tmp_path: Path) -> ApiContext:
    return ApiContext(store=store, artifact_dir=tmp_path / "artifacts", work_root=tmp_path / "c")


@pytest.fixture
def token(store: Store) -> str:
    return ServiceStore(store).new_token()


@pytest.fixture
def local(ctx: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx), client=LOCAL) as client:
        yield client


@pytest.fixture
def remote(ctx: ApiContext) -> Iterator[TestClient]:
    with TestClient(create_app(ctx), client=REMOTE) as client:
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
    response = client.post(
        "/api/v1/artifacts", params={"filename": name}, content=content, headers=auth(token)
    )
    assert response.status_code == 201, response.text
    return response.json()


def test_reads_are_open_on_localhost_and_need_the_token_from_elsewhere(
    local: TestClient, remote: TestClient, store: Store, token: str
) -> None:
    _device(store, "pi-1")
    assert local.get("/api/v1/devices").status_code == 200
    refused = remote.get("/api/v1/devices")
    assert refused.status_code == 401
    assert "Authorization: Bearer" in refused.json()["error"]["message"]
    assert remote.get("/api/v1/devices", headers=auth("et_wrong")).status_code == 403
    assert remote.get("/api/v1/devices", headers=auth(token)).json()[0]["device_id"] == "pi-1"


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
def test_every_mutation_needs_a_valid_token_even_from_localhost(
    local: TestClient, token: str, method: str, path: str
) -> None:
    missing = getattr(local, method)(path, json={})
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "unauthorized"
    wrong = getattr(local, method)(path, json={}, headers=auth(token + "x"))
    assert wrong.status_code == 403 and missing.headers.get("www-authenticate") == "Bearer"


def test_a_token_is_stored_hashed_and_a_new_one_revokes_the_old(store: Store) -> None:
    sstore = ServiceStore(store)
    first = sstore.new_token()
    with store.read() as session:
        stored = session.execute(__import__("sqlalchemy").text("SELECT sha256 FROM api_tokens"))
        assert first not in {row[0] for row in stored}
    second = sstore.new_token(revoke_others=True)
    assert sstore.check_token(second) and not sstore.check_token(first)


def test_unknown_ids_are_404s_that_name_the_id(local: TestClient) -> None:
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
        response = local.get(path)
        assert response.status_code == 404, path
        assert ident in response.json()["error"]["message"], path


def test_invalid_bodies_are_422s_that_name_the_field(local: TestClient, token: str) -> None:
    bad = local.post("/api/v1/campaigns", json={"model": "builtin:x", "runs": 0},
                     headers=auth(token))  # fmt: skip
    assert bad.status_code == 422
    fields = {f["field"] for f in bad.json()["error"]["fields"]}
    assert {"body.data", "body.runs"} <= fields
    extra = local.post("/api/v1/deployments", json={"sha256": "x", "wavez": "1"},
                       headers=auth(token))  # fmt: skip
    assert {f["field"] for f in extra.json()["error"]["fields"]} == {"body.sha256", "body.wavez"}
    both = local.post("/api/v1/deployments", json={"sha256": "a" * 64, "campaign_id": "c"},
                      headers=auth(token))  # fmt: skip
    assert both.status_code == 422 and "exactly one of" in both.json()["error"]["message"]
    waves = local.post("/api/v1/deployments", json={"targets": [], "waves": "x%"},
                       headers=auth(token))  # fmt: skip
    assert waves.status_code == 422 and "devices" in waves.json()["error"]["message"]


def test_an_uploaded_artifact_is_listed_described_and_downloaded_byte_for_byte(
    local: TestClient, token: str, tmp_path: Path
) -> None:
    import numpy as np

    np.savez(tmp_path / "eval.npz", x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4))
    content = (tmp_path / "eval.npz").read_bytes()
    manifest = _upload(local, token, content, "eval.npz")
    assert manifest["sha256"] == hashlib.sha256(content).hexdigest()
    assert manifest["format"] == "npz" and manifest["name"] == "eval"
    listed = local.get("/api/v1/artifacts").json()
    assert [a["sha256"] for a in listed] == [manifest["sha256"]] and listed[0]["downloadable"]
    assert local.get(f"/api/v1/artifacts/{manifest['sha256']}").json()["size_bytes"] == len(content)
    assert local.get(f"/api/v1/artifacts/{manifest['sha256']}/download").content == content
    broken = local.post("/api/v1/artifacts", params={"filename": "m.tflite"}, content=b"nope",
                        headers=auth(token))  # fmt: skip
    assert broken.status_code == 400 and "not a valid TFLite model" in broken.text
    assert len(list((tmp_path / "artifacts").iterdir())) == 1  # nothing kept of the bad one
    named = local.post("/api/v1/artifacts", params={"filename": "../x.sh"}, content=b"x",
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
    local: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    sha = _stored_model(store, tmp_path)
    for device in ("pi-1", "pi-2", "pi-3"):
        _device(store, device, online=device != "pi-3")
    created = local.post(
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
    status = local.get(f"/api/v1/deployments/{doc['rollout_id']}").json()
    assert {d["device_id"]: d["state"] for d in status["devices"]} == {
        "pi-1": "committed", "pi-2": "committed", "pi-3": "pending",
    }  # fmt: skip
    assert [r["rollout_id"] for r in local.get("/api/v1/deployments").json()] == [doc["rollout_id"]]
    detail = local.get("/api/v1/devices/pi-3").json()
    assert detail["state"]["in_sync"] is False and "offline" in detail["state"]["reason"]
    assert detail["capabilities"]["arch"] == "aarch64"
    assert [h["kind"] for h in detail["history"]] == ["deploy"]
    status_rows = {r["device_id"]: r for r in local.get("/api/v1/status").json()}
    assert "offline" in status_rows["pi-3"]["state"]["reason"]

    cancelled = local.post(f"/api/v1/deployments/{doc['rollout_id']}/cancel", headers=auth(token))
    assert cancelled.json()["status"] == "cancelled"
    again = local.post(f"/api/v1/deployments/{doc['rollout_id']}/cancel", headers=auth(token))
    assert again.status_code == 400 and "not active" in again.json()["error"]["message"]
    rolled = local.post(f"/api/v1/deployments/{doc['rollout_id']}/rollback", headers=auth(token))
    assert rolled.json()["status"] == "rolled_back"
    for _ in range(3):
        driver.step()
    final = local.get(f"/api/v1/deployments/{doc['rollout_id']}").json()
    assert {d["device_id"]: d["state"] for d in final["devices"]} == {
        "pi-1": "reverted", "pi-2": "reverted", "pi-3": "skipped",
    }  # fmt: skip
    unknown = local.post("/api/v1/deployments", json={"sha256": "c" * 64, "devices": ["pi-1"]},
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
    local: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    created = local.post(
        "/api/v1/campaigns",
        json={"model": "builtin:digits_cnn", "data": "builtin:digits", "space": "demo",
              "devices": ["pi-1"], "constraints": ["accuracy_drop<=0.02"],
              "campaign_id": "camp-q"},
        headers=auth(token),
    )  # fmt: skip
    assert created.status_code == 202, created.text
    assert created.json()["job"] == "queued" and created.json()["status"] == "created"
    conflict = local.post(
        "/api/v1/campaigns", json={"model": "builtin:other", "data": "builtin:digits",
                                   "campaign_id": "camp-q"}, headers=auth(token),
    )  # fmt: skip
    assert conflict.status_code == 409
    bad = local.post("/api/v1/campaigns", json={"model": "m", "data": "d",
                     "constraints": ["speed>=fast"]}, headers=auth(token))  # fmt: skip
    assert bad.status_code == 400 and "speed" in bad.json()["error"]["message"]
    cancelled = local.post("/api/v1/campaigns/camp-q/cancel", headers=auth(token))
    assert cancelled.json()["job"] == "cancelled"

    _finished_campaign(store, tmp_path)
    assert {c["campaign_id"] for c in local.get("/api/v1/campaigns").json()} == {"camp-q", "camp-1"}
    detail = local.get("/api/v1/campaigns/camp-1").json()
    assert detail["candidates"][0]["id"] == "orig" and detail["selection"]["pi-1"]["candidate"]
    assert local.get("/api/v1/campaigns/camp-1/results").json()["results"] == []
    assert "pi-1" in local.get("/api/v1/campaigns/camp-1/selection").json()["selection"]
    cli_run = local.post("/api/v1/campaigns/camp-1/cancel", headers=auth(token))
    assert cli_run.status_code == 400 and "CLI" in cli_run.json()["error"]["message"]

    deploy = local.post("/api/v1/deployments", json={"campaign_id": "camp-1"}, headers=auth(token))
    assert deploy.status_code == 201, deploy.text
    assert [d["label"] for d in deploy.json()["devices"]] == ["orig"]


def test_a_campaign_posted_with_task_metric_strict_and_eval_samples_stores_them_in_its_spec(
    local: TestClient, store: Store, token: str
) -> None:
    created = local.post(
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
    unknown = local.post(
        "/api/v1/campaigns", json={"model": "m", "data": "d", "task": "vision"},
        headers=auth(token),
    )  # fmt: skip
    assert unknown.status_code == 422
    assert {f["field"] for f in unknown.json()["error"]["fields"]} == {"body.task"}


def test_device_rollback_without_a_broker_says_so(
    local: TestClient, store: Store, token: str
) -> None:
    _device(store, "pi-1")
    response = local.post("/api/v1/devices/pi-1/rollback", json={}, headers=auth(token))
    assert response.status_code == 503 and "no broker" in response.json()["error"]["message"]
    unknown = local.post("/api/v1/devices/pi-9/rollback", json={}, headers=auth(token))
    assert unknown.status_code == 404


def test_a_benchmark_names_an_unknown_artifact_and_without_a_broker_says_so(
    local: TestClient, store: Store, token: str, tmp_path: Path
) -> None:
    unknown = local.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": "c" * 64},
                         headers=auth(token))  # fmt: skip
    assert unknown.status_code == 404 and "c" * 64 in unknown.json()["error"]["message"]
    sha = _stored_model(store, tmp_path)
    no_fleet = local.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": sha},
                          headers=auth(token))  # fmt: skip
    assert no_fleet.status_code == 503 and "no broker" in no_fleet.json()["error"]["message"]
    bad = local.post("/api/v1/benchmarks", json={"device_id": "pi-1", "sha256": sha, "runs": 0},
                     headers=auth(token))  # fmt: skip
    assert bad.status_code == 422
    assert {f["field"] for f in bad.json()["error"]["fields"]} == {"body.runs"}


def test_events_stream_device_and_deployment_changes_as_they_are_stored(
    local: TestClient, ctx: ApiContext, store: Store, tmp_path: Path, token: str
) -> None:
    watcher = ChangeWatcher(store, ctx.bus)
    watcher.poll()  # nothing yet
    with local.stream("GET", "/api/v1/events", params={"max_events": 3}) as stream:
        _device(store, "pi-1")
        sha = _stored_model(store, tmp_path)
        local.post("/api/v1/deployments", json={"sha256": sha, "devices": ["pi-1"]},
                   headers=auth(token))  # fmt: skip
        watcher.poll()
        events = _read_events(stream)
    assert [e["event"] for e in events] == ["device", "telemetry", "deployment"]
    assert events[0]["data"]["device_id"] == "pi-1" and events[0]["data"]["online"] is True
    assert events[1]["data"]["agent_rss_mb"] == 28.0
    assert events[2]["data"]["devices"] == {"pi-1": {"state": "pending", "stage": None}}
    replay = local.get("/api/v1/events", params={"max_events": 1, "types": "deployment"},
                       headers={"Last-Event-ID": "0"})  # fmt: skip
    assert [e["event"] for e in _parse(replay.text)] == ["deployment"]
    assert local.get("/api/v1/events", params={"types": "nope"}).status_code == 422


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
    local: TestClient, store: Store, tmp_path: Path
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
    text = local.get("/metrics").text
    assert "edgetailor_devices_online 1.0" in text
    assert 'edgetailor_jobs{kind="benchmark",state="answered"} 1.0' in text
    assert "edgetailor_result_latency_seconds_count 1.0" in text
    assert "edgetailor_transfer_bytes_total 4096.0" in text
    assert "edgetailor_deployment_targets" in text and "edgetailor_service_jobs" in text


def test_healthz_says_whether_a_broker_is_connected(local: TestClient) -> None:
    doc = local.get("/healthz").json()
    assert doc["fleet_connected"] is False and doc["database"].startswith("sqlite")


# --------------------------------------------------------------------------------------------------
# schemathesis: generated requests against our own schema; no 500s.


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Any:
    tmp = tmp_path_factory.mktemp("fuzz")
    store = Store(f"sqlite:///{tmp / 'host.db'}")
    _device(store, "pi-1")
    ctx = ApiContext(store=store, artifact_dir=tmp / "artifacts", work_root=tmp / "c",
                     open_read_hosts=("testclient",))  # fmt: skip
    app = create_app(ctx)
    app.state.fuzz_token = ServiceStore(store).new_token()
    return app


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app: Any) -> Any:
    loaded = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    # The event stream never ends by itself; it has its own test above.
    return loaded.exclude(path="/api/v1/events")


def test_generated_requests_never_get_a_server_error(fuzz_schema: Any, fuzz_app: Any) -> None:
    from hypothesis import HealthCheck, given, settings

    operations = [result.ok() for result in fuzz_schema.get_all_operations()]
    assert len(operations) >= 18
    token = fuzz_app.state.fuzz_token
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=30, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))  # fmt: skip
        def no_server_error(case: Any) -> None:
            for headers in ({}, auth(token)):
                case.call_and_validate(headers=headers, checks=[not_a_server_error])

        no_server_error()
