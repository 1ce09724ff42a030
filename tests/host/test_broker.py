"""The embedded amqtt broker keeps retained messages and delivers Last Wills."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator

import paho.mqtt.client as mqtt
import pytest

from host.broker import BrokerError, EmbeddedBroker
from tests.brokers import free_port


def _subscriber(port: int, topic: str) -> tuple[mqtt.Client, queue.Queue[tuple[str, bytes, bool]]]:
    got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{time.time_ns()}")
    client.on_message = lambda _c, _u, msg: got.put((msg.topic, msg.payload, msg.retain))
    client.connect("127.0.0.1", port)
    client.subscribe(topic, qos=1)
    client.loop_start()
    return client, got


@pytest.fixture
def embedded_broker() -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker("127.0.0.1", free_port())
    broker.start()
    yield broker
    broker.stop()


def test_retained_message_reaches_a_client_that_subscribes_later(
    embedded_broker: EmbeddedBroker,
) -> None:
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub")
    publisher.connect("127.0.0.1", embedded_broker.port)
    publisher.loop_start()
    publisher.publish("t/status", b"online", qos=1, retain=True).wait_for_publish(5)
    publisher.disconnect()
    publisher.loop_stop()

    client, got = _subscriber(embedded_broker.port, "t/#")
    try:
        topic, payload, retained = got.get(timeout=5)
    finally:
        client.loop_stop()
        client.disconnect()
    assert (topic, payload, retained) == ("t/status", b"online", True)


def test_last_will_is_delivered_when_a_client_is_killed(embedded_broker: EmbeddedBroker) -> None:
    client, got = _subscriber(embedded_broker.port, "w/#")
    script = textwrap.dedent(
        f"""
        import time, paho.mqtt.client as mqtt
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="victim")
        c.will_set("w/status", b"offline", qos=1, retain=True)
        c.connect("127.0.0.1", {embedded_broker.port}, keepalive=30)
        c.loop_start()
        c.publish("w/status", b"online", qos=1, retain=True).wait_for_publish(5)
        print("ready", flush=True)
        time.sleep(60)
        """
    )
    victim = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    try:
        assert victim.stdout is not None and victim.stdout.readline().strip() == b"ready"
        assert got.get(timeout=5)[1] == b"online"
        victim.kill()
        victim.wait(5)
        topic, payload, _ = got.get(timeout=5)
    finally:
        victim.kill()
        client.loop_stop()
        client.disconnect()
    assert (topic, payload) == ("w/status", b"offline")


def test_starting_on_a_busy_port_says_which_port_is_taken() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(BrokerError, match=f"127.0.0.1:{port}"):
            EmbeddedBroker("127.0.0.1", port).start()


def test_the_fleet_sees_a_device_and_its_will_through_the_embedded_broker(
    embedded_broker: EmbeddedBroker, base_topic: str
) -> None:
    from host.fleet import Fleet
    from tests.host.fleet_helpers import ScriptedDevice

    device = ScriptedDevice(embedded_broker.url, base_topic, "pi-embedded")
    device.announce()
    with Fleet(embedded_broker.url, base_topic) as fleet:
        record = fleet.wait_for_device("pi-embedded", timeout=5)
        assert record.birth is not None and record.birth.arch == "aarch64"
        device.client.socket().close()  # an unclean end: the broker must publish the Will
        deadline = time.monotonic() + 10
        while fleet.devices()["pi-embedded"].online and time.monotonic() < deadline:
            time.sleep(0.05)
        assert fleet.devices()["pi-embedded"].online is False
    device.client.loop_stop()


def test_the_broker_command_serves_clients_until_interrupted() -> None:
    import signal

    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from host.cli.main import main; main()",
            "broker",
            "--port",
            str(port),
        ],
        stderr=subprocess.PIPE,
    )
    try:
        from tests.brokers import wait_for_port

        wait_for_port(port, timeout=30)
        client, got = _subscriber(port, "cli/#")
        client.publish("cli/hello", b"hi", qos=1).wait_for_publish(5)
        assert got.get(timeout=5)[1] == b"hi"
        client.loop_stop()
        client.disconnect()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=15) in (0, 130)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _collect(got: queue.Queue[tuple[str, bytes, bool]], quiet_s: float = 1.0) -> list[str]:
    topics = []
    while True:
        try:
            topics.append(got.get(timeout=quiet_s)[0])
        except queue.Empty:
            return topics


def test_a_fresh_client_gets_no_retained_message_of_topics_it_did_not_subscribe_to(
    embedded_broker: EmbeddedBroker, base_topic: str
) -> None:
    from host.fleet import Fleet
    from shared.topics import Topics
    from tests.host.fleet_helpers import ScriptedDevice

    topics = Topics(base_topic)
    device = ScriptedDevice(embedded_broker.url, base_topic, "pi-retained")
    device.announce()  # retained birth and status; the device subscribed to host/status
    try:
        with Fleet(embedded_broker.url, base_topic) as fleet:  # retained host status
            fleet.wait_for_device("pi-retained", timeout=5)
            unrelated, got = _subscriber(embedded_broker.port, topics.artifact_chunks("ab" * 32))
            try:
                assert _collect(got) == []
            finally:
                unrelated.loop_stop()
                unrelated.disconnect()
            watcher, got = _subscriber(embedded_broker.port, f"{topics.root}/dev/+/birth")
            try:
                assert _collect(got) == [topics.birth("pi-retained")]  # its own filter, once
            finally:
                watcher.loop_stop()
                watcher.disconnect()
    finally:
        device.close()


def test_a_client_holding_a_wildcard_gets_the_matching_retained_messages_once(
    embedded_broker: EmbeddedBroker,
) -> None:
    publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-wild")
    publisher.connect("127.0.0.1", embedded_broker.port)
    publisher.loop_start()
    for topic in ("r/a/status", "r/b/status", "r/a/birth", "other"):
        publisher.publish(topic, b"x", qos=1, retain=True).wait_for_publish(5)
    publisher.disconnect()
    publisher.loop_stop()
    first, got_first = _subscriber(embedded_broker.port, "r/+/status")
    second, got_second = _subscriber(embedded_broker.port, "r/a/#")
    try:
        assert sorted(_collect(got_first)) == ["r/a/status", "r/b/status"]
        assert sorted(_collect(got_second)) == ["r/a/birth", "r/a/status"]
    finally:
        for client in (first, second):
            client.loop_stop()
            client.disconnect()
