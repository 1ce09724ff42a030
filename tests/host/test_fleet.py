"""Fleet connection and device registry, against a scripted device on real Mosquitto (commands
and their results: test_commands.py)."""

from __future__ import annotations

import queue
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from host.errors import DeviceUnavailableError
from host.fleet import Fleet, FleetConnectionError
from host.store import Store
from shared.messages import Telemetry
from shared.topics import Topics
from tests.brokers import MosquittoProcess, free_port
from tests.host.fleet_helpers import ScriptedDevice


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
