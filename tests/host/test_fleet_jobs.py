"""Fleet connection, device registry and job results, against a scripted device on real Mosquitto."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest

from host.errors import DeviceUnavailableError, JobFailedError, JobTimeoutError
from host.fleet import Fleet, FleetConnectionError
from host.store import Store
from shared.messages import AckCmd, BenchmarkCmd, ErrorInfo, PingCmd, Response, Telemetry
from shared.results import BenchmarkResult, LatencyStats, to_data
from shared.topics import Topics
from tests.brokers import MosquittoProcess, free_port
from tests.host.fleet_helpers import ScriptedDevice


@pytest.fixture
def eval_file(tmp_path: Path) -> Path:
    path = tmp_path / "eval.npz"
    np.savez(path, x=np.zeros((4, 1, 8, 8), np.float32), y=np.arange(4, dtype=np.int64))
    return path


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(f"sqlite:///{tmp_path / 'host.db'}")
    yield opened
    opened.close()


@pytest.fixture
def device(shared_broker_url: str, base_topic: str) -> Iterator[ScriptedDevice]:
    scripted = ScriptedDevice(shared_broker_url, base_topic, "pi-01")
    scripted.announce()
    yield scripted
    scripted.close()


@pytest.fixture
def fleet(shared_broker_url: str, base_topic: str, store: Store) -> Iterator[Fleet]:
    with Fleet(shared_broker_url, base_topic, store=store) as opened:
        yield opened


def _result(job_id: str, sha: str) -> BenchmarkResult:
    stats = LatencyStats(mean=1.0, std=0.1, min=0.9, p50=1.0, p90=1.1, p95=1.2, p99=1.3, max=1.4)
    return BenchmarkResult(
        job_id=job_id,
        model_sha256=sha,
        backend="npz",
        runtime="none",
        threads=1,
        size_bytes=10,
        load_ms=1.0,
        warmup_runs=1,
        runs=5,
        latency_ms=stats,
        peak_rss_mb=30.0,
        rss_growth_mb=1.0,
    )


def test_an_unreachable_broker_is_reported_with_its_url() -> None:
    port = free_port()
    with pytest.raises(
        FleetConnectionError, match=f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}"
    ):
        Fleet(f"mqtt://127.0.0.1:{port}").connect()


def test_a_broker_that_refuses_the_client_is_reported_with_its_reason(tmp_path: Path) -> None:
    port = free_port()
    broker = MosquittoProcess(
        tmp_path / "mq", port, extra_config=f"listener {port} 127.0.0.1\nallow_anonymous false\n"
    )
    broker.start()
    try:
        with pytest.raises(
            FleetConnectionError, match=rf"mqtt://127.0.0.1:{port} refused .*Not authorized"
        ):
            Fleet(broker.url, connect_timeout=5).connect()
    finally:
        broker.stop()


def test_host_status_is_online_while_connected_and_offline_after_close(
    shared_broker_url: str, base_topic: str
) -> None:
    topic = Topics(base_topic).host_status()
    seen: queue.Queue[bytes] = queue.Queue()
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.on_message = lambda _c, _u, msg: seen.put(msg.payload)
    watcher.connect("127.0.0.1", 1883)
    watcher.subscribe(topic, qos=1)
    watcher.loop_start()
    try:
        with Fleet(shared_broker_url, base_topic):
            assert seen.get(timeout=5) == b"online"
        assert seen.get(timeout=5) == b"offline"
    finally:
        watcher.loop_stop()
        watcher.disconnect()


def test_devices_are_known_from_retained_birth_and_status_and_telemetry(
    device: ScriptedDevice, fleet: Fleet, store: Store
) -> None:
    record = fleet.wait_for_device("pi-01", timeout=5)
    assert record.online and record.birth is not None and record.birth.cores == 4
    device.send(
        fleet.topics.telemetry("pi-01"),
        Telemetry(cpu_percent=5.0, mem_used_mb=100.0, mem_total_mb=3906.0, agent_rss_mb=26.0),
    )
    deadline = time.monotonic() + 5
    while fleet.devices()["pi-01"].telemetry is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fleet.devices()["pi-01"].telemetry.agent_rss_mb == 26.0
    stored = store.get_device("pi-01")
    assert stored is not None and stored.online and stored.birth["arch"] == "aarch64"
    assert stored.telemetry is not None


def test_waiting_for_a_device_that_never_shows_up_says_so(fleet: Fleet) -> None:
    with pytest.raises(DeviceUnavailableError, match="'ghost' is never seen"):
        fleet.wait_for_device("ghost", timeout=0.5)


def test_a_result_sent_twice_is_delivered_once_stored_once_and_acked_each_time(
    device: ScriptedDevice, fleet: Fleet, store: Store, eval_file: Path
) -> None:
    stages: list[str] = []
    delivered: list[str] = []
    fleet.on_result(lambda handle, _response: delivered.append(handle.job_id))
    job = fleet.submit_benchmark(
        "pi-01", eval_file, runs=5, on_progress=lambda _h, stage, _d: stages.append(stage)
    )
    name, command = device.next_command()
    assert name == "benchmark" and isinstance(command.body, BenchmarkCmd)
    assert command.body.job_id == job.job_id and command.body.model.format == "npz"
    resp_topic = fleet.topics.resp("pi-01", "benchmark")
    device.send(
        resp_topic,
        Response(status="progress", data={"stage": "accepted", "job_id": job.job_id}),
        corr_id=command.msg_id,
    )
    data = to_data(_result(job.job_id, command.body.model.sha256))
    final = Response(status="ok", data=data)
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-1")
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-1")  # outbox re-send
    device.send(resp_topic, final, corr_id=command.msg_id, msg_id="final-2")  # new envelope

    result = job.result(timeout=5)
    assert result.job_id == job.job_id and result.latency_ms.p50 == 1.0
    acks = [device.next_command() for _ in range(3)]
    assert [(n, m.body.msg_ids) for n, m in acks] == [
        ("ack", ["final-1"]),
        ("ack", ["final-1"]),
        ("ack", ["final-2"]),
    ]
    assert all(isinstance(m.body, AckCmd) for _, m in acks)
    assert delivered == [job.job_id]
    assert stages == ["accepted", "done"]
    assert [r.response_msg_id for r in store.list_results()] == ["final-1"]
    stored_job = store.get_job(job.job_id)
    assert stored_job is not None and stored_job.status == "ok"


def test_a_device_error_raises_job_failed_with_the_device_code(
    device: ScriptedDevice, fleet: Fleet, eval_file: Path
) -> None:
    job = fleet.submit_benchmark("pi-01", eval_file)
    _name, command = device.next_command()
    device.send(
        fleet.topics.resp("pi-01", "benchmark"),
        Response(status="error", error=ErrorInfo(code="hash_mismatch", message="sha differs")),
        corr_id=command.msg_id,
    )
    with pytest.raises(JobFailedError, match=r"\[hash_mismatch\] sha differs") as info:
        job.result(timeout=5)
    assert info.value.code == "hash_mismatch"


def test_a_job_without_an_answer_times_out_naming_its_last_stage(
    device: ScriptedDevice, fleet: Fleet
) -> None:
    job = fleet.send_command("pi-01", PingCmd())
    assert device.next_command()[0] == "ping"
    with pytest.raises(JobTimeoutError, match="last stage: submitted"):
        job.wait(timeout=0.3)


def test_a_final_response_for_a_job_of_another_host_is_neither_stored_nor_acked(
    device: ScriptedDevice, fleet: Fleet, store: Store
) -> None:
    device.send(
        fleet.topics.resp("pi-01", "benchmark"),
        Response(status="ok", data={"job_id": "job-elsewhere"}),
        corr_id="cmd-of-another-host",
    )
    with pytest.raises(queue.Empty):
        device.next_command(timeout=1.0)
    assert store.list_results() == []


def test_the_job_tracker_forgets_old_finished_jobs_but_not_pending_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from host.fleet import jobs as jobs_module
    from host.fleet.jobs import JobHandle, JobTracker
    from shared.messages import Response

    monkeypatch.setattr(jobs_module, "MAX_TRACKED", 10)
    tracker = JobTracker()
    pending = JobHandle(job_id="keep", device_id="d", command_msg_id="c-keep", kind="benchmark")
    tracker.add(pending)
    for i in range(30):
        handle = JobHandle(job_id=f"j{i}", device_id="d", command_msg_id=f"c{i}", kind="benchmark")
        tracker.add(handle)
        assert tracker.claim_final(handle.job_id, f"r{i}")
        handle._finish(Response(status="ok", data={}), f"r{i}")
    assert len(tracker._by_job) <= 12 and tracker.by_job("keep") is pending
    assert tracker.by_command("c29") is not None  # the newest are still routed
    assert len(tracker._final_jobs) <= 10
