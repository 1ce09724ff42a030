"""The shipped Mosquitto TLS listener and ACL refuse what they must, proved with real paho clients.

One private Mosquitto per module runs ``render_mosquitto_tls_conf`` with the repository's own
``deploy/mosquitto/acl.conf`` and certificates made by ``host.security`` in a temporary PKI.

Mosquitto's ``acl_file`` never refuses a SUBSCRIBE (SUBACK is granted, see
eclipse-mosquitto/mosquitto#2042); what it refuses is the delivery of each message to a client
without read access. So the subscription tests prove that nothing is delivered, with a positive
control that a message published later by the same publisher does arrive.
"""

from __future__ import annotations

import shutil
import socket
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.reasoncodes import ReasonCode

from host.errors import DeviceUnavailableError
from host.fleet.client import Fleet
from host.security import (
    BrokerTlsFiles,
    IssuedCert,
    init_ca,
    issue_cert,
    render_mosquitto_tls_conf,
    revoke_cert,
)
from shared.broker_url import TlsOptions
from shared.topics import Topics
from tests.agents import AgentProcess
from tests.brokers import MosquittoProcess, free_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED_ACL = REPO / "deploy" / "mosquitto" / "acl.conf"
T = Topics()  # the shipped ACL is written for the default base topic
DEVICE_A, DEVICE_B = "pi-a", "pi-b"
NOT_AUTHORIZED = 0x87
TIMEOUT = 5.0


@dataclass(frozen=True)
class Pki:
    ca: Path
    host: IssuedCert
    server: IssuedCert
    device_a: IssuedCert
    device_b: IssuedCert
    rogue_device_a: IssuedCert  # same common name as device A, signed by another CA
    rogue_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    pki_dir = tmp_path_factory.mktemp("pki")
    init_ca(pki_dir)
    rogue_dir = tmp_path_factory.mktemp("rogue-pki")
    init_ca(rogue_dir, common_name="someone else's CA")
    return Pki(
        ca=pki_dir / "ca.crt",
        host=issue_cert(pki_dir, kind="host"),
        server=issue_cert(pki_dir, kind="server"),
        device_a=issue_cert(pki_dir, DEVICE_A),
        device_b=issue_cert(pki_dir, DEVICE_B),
        rogue_device_a=issue_cert(rogue_dir, DEVICE_A),
        rogue_ca=rogue_dir / "ca.crt",
    )


def _start_tls_broker(workdir: Path, pki_dir: Path, server: IssuedCert) -> MosquittoProcess:
    acl = workdir / "acl.conf"
    workdir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(SHIPPED_ACL, acl)
    port = free_port()
    files = BrokerTlsFiles(
        cafile=str(pki_dir / "ca.crt"),
        certfile=str(server.cert_path),
        keyfile=str(server.key_path),
        crlfile=str(pki_dir / "crl.pem"),
        acl_file=str(acl),
    )
    # MosquittoProcess names the current user, so the broker can read pytest's temp directories.
    config = render_mosquitto_tls_conf(files, port=port, bind_address="127.0.0.1")
    broker = MosquittoProcess(workdir / "mosquitto", port=port, extra_config=config)
    broker.start()
    return broker


@pytest.fixture(scope="module")
def broker(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[MosquittoProcess]:
    proc = _start_tls_broker(tmp_path_factory.mktemp("broker"), pki.ca.parent, pki.server)
    yield proc
    proc.stop()


class Probe:
    """A real paho client with blocking connect/subscribe/publish, recording what it receives."""

    def __init__(
        self,
        port: int,
        ca: Path,
        identity: IssuedCert | None,
        *,
        protocol: int = mqtt.MQTTv5,
        will_topic: str | None = None,
        will_payload: bytes = b"offline",
    ) -> None:
        self.port = port
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"probe-{uuid.uuid4().hex[:8]}",
            protocol=protocol,
        )
        self.client.tls_set(
            ca_certs=str(ca),
            certfile=str(identity.cert_path) if identity else None,
            keyfile=str(identity.key_path) if identity else None,
        )
        if will_topic:
            self.client.will_set(will_topic, will_payload, qos=1)
        self.connack: ReasonCode | None = None
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self.messages: list[tuple[str, bytes]] = []
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_publish = self._on_publish

    # -- callbacks (paho's network thread) -----------------------------------------------------
    def _on_connect(
        self, _c: mqtt.Client, _u: object, _f: object, rc: ReasonCode, _p: object
    ) -> None:
        self.connack = rc
        self._connected.set()

    def _on_disconnect(
        self, _c: mqtt.Client, _u: object, _f: object, _rc: object, _p: object
    ) -> None:
        self.disconnected.set()

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append((msg.topic, msg.payload))

    def _on_subscribe(
        self, _c: mqtt.Client, _u: object, mid: int, rcs: list[ReasonCode], _p: object
    ) -> None:
        with self._lock:
            self._subacks[mid] = rcs

    def _on_publish(
        self, _c: mqtt.Client, _u: object, mid: int, rc: ReasonCode, _p: object
    ) -> None:
        with self._lock:
            self._pubacks[mid] = rc

    # -- blocking API --------------------------------------------------------------------------
    def connect(self) -> bool:
        """True when the broker accepted the connection (CONNACK success) within the timeout."""
        self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            if self._connected.is_set() or self.disconnected.is_set():
                break
            time.sleep(0.01)
        return (
            self.connack is not None
            and not self.connack.is_failure
            and not self.disconnected.is_set()
        )

    def subscribe(self, topic: str) -> list[ReasonCode]:
        _, mid = self.client.subscribe(topic, qos=1)
        return self._wait(lambda: self._subacks.get(mid))

    def publish(self, topic: str, payload: bytes) -> ReasonCode:
        """QoS 1 publish; returns the PUBACK's reason code (always Success under MQTT 3.1.1)."""
        info = self.client.publish(topic, payload, qos=1)
        return self._wait(lambda: self._pubacks.get(info.mid))

    def wait_for(self, payload: bytes) -> str:
        """Wait until a message with ``payload`` arrives and return its topic."""
        return self._wait(lambda: next((t for t, p in self.messages if p == payload), None))

    def got(self, payload: bytes) -> bool:
        with self._lock:
            return any(p == payload for _, p in self.messages)

    def topics_received(self) -> set[str]:
        with self._lock:
            return {t for t, _ in self.messages}

    def _wait(self, get: Callable[[], object]) -> object:
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            with self._lock:
                value = get()
            if value is not None:
                return value
            time.sleep(0.01)
        raise TimeoutError("no answer from the broker in time")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def drop(self) -> None:
        """Vanish without DISCONNECT, as a board losing power, so the broker sends the Will."""
        sock = self.client.socket()
        self.client.loop_stop()
        if sock is not None:
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@pytest.fixture
def clients(broker: MosquittoProcess, pki: Pki) -> Iterator[Callable[..., Probe]]:
    made: list[Probe] = []

    identities = {"host": pki.host, "device_a": pki.device_a, "device_b": pki.device_b}

    def connect(name: str, **kwargs: object) -> Probe:
        probe = Probe(broker.port, pki.ca, identities[name], **kwargs)  # type: ignore[arg-type]
        assert probe.connect(), f"{name} could not connect"
        made.append(probe)
        return probe

    yield connect
    for probe in made:
        probe.close()


def _token() -> bytes:
    return uuid.uuid4().hex.encode()


# -- who may connect -------------------------------------------------------------------------------


def test_client_with_a_certificate_from_another_ca_cannot_connect(
    broker: MosquittoProcess, pki: Pki
) -> None:
    impostor = Probe(broker.port, pki.ca, pki.rogue_device_a)
    try:
        assert not impostor.connect()
        assert impostor.connack is None, "the broker must not even answer CONNECT"
    finally:
        impostor.client.loop_stop()


def test_anonymous_client_without_a_certificate_cannot_connect(
    broker: MosquittoProcess, pki: Pki
) -> None:
    anonymous = Probe(broker.port, pki.ca, None)
    try:
        assert not anonymous.connect()
        assert anonymous.connack is None
    finally:
        anonymous.client.loop_stop()


def test_plain_tcp_client_gets_no_mqtt_session_on_the_tls_port(broker: MosquittoProcess) -> None:
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="plain", protocol=mqtt.MQTTv5)
    connected = threading.Event()
    plain.on_connect = lambda *_args: connected.set()
    plain.connect("127.0.0.1", broker.port)
    plain.loop_start()
    try:
        assert not connected.wait(1.5)
    finally:
        plain.loop_stop()


def test_device_that_trusts_another_ca_refuses_our_broker(
    broker: MosquittoProcess, pki: Pki
) -> None:
    misconfigured = Probe(broker.port, pki.rogue_ca, pki.device_a)
    with pytest.raises(ssl.SSLCertVerificationError):
        misconfigured.connect()


def test_revoked_device_certificate_is_refused_after_the_broker_restarts(tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    init_ca(pki_dir)
    server = issue_cert(pki_dir, kind="server")
    lost_board = issue_cert(pki_dir, "pi-lost")
    kept_board = issue_cert(pki_dir, "pi-kept")
    revoke_cert(pki_dir, "pi-lost")
    broker = _start_tls_broker(tmp_path / "broker", pki_dir, server)
    try:
        revoked = Probe(broker.port, pki_dir / "ca.crt", lost_board)
        kept = Probe(broker.port, pki_dir / "ca.crt", kept_board)
        try:
            assert not revoked.connect()
            assert kept.connect()
        finally:
            revoked.client.loop_stop()
            kept.close()
    finally:
        broker.stop()


# -- what a device may publish ---------------------------------------------------------------------


def test_device_publishes_on_its_own_topics_and_the_host_receives_everything(
    clients: Callable[..., Probe],
) -> None:
    host = clients("host")
    host.subscribe(f"{T.root}/dev/+/#")
    device = clients("device_a")
    own_topics = [
        T.status(DEVICE_A),
        T.birth(DEVICE_A),
        T.telemetry(DEVICE_A),
        T.resp(DEVICE_A, "benchmark"),
        T.xfer_request(DEVICE_A),
    ]
    for topic in own_topics:
        token = _token()
        assert not device.publish(topic, token).is_failure, topic
        assert host.wait_for(token) == topic


@pytest.mark.parametrize(
    "topic",
    [
        T.status(DEVICE_B),
        T.birth(DEVICE_B),
        T.telemetry(DEVICE_B),
        T.resp(DEVICE_B, "benchmark"),
        T.xfer_request(DEVICE_B),
    ],
)
def test_device_a_publishing_on_device_b_topics_is_refused_and_nothing_arrives(
    clients: Callable[..., Probe], topic: str
) -> None:
    host = clients("host")
    host.subscribe(f"{T.root}/#")
    device_a = clients("device_a")
    forged, sentinel = _token(), _token()
    assert device_a.publish(topic, forged).value == NOT_AUTHORIZED
    # The same client's next allowed message arrives after the forged one would have.
    device_a.publish(T.telemetry(DEVICE_A), sentinel)
    host.wait_for(sentinel)
    assert not host.got(forged)


def test_device_a_publishing_on_device_b_topics_over_mqtt_311_is_dropped_silently(
    clients: Callable[..., Probe],
) -> None:
    host = clients("host")
    host.subscribe(f"{T.root}/#")
    device_a = clients("device_a", protocol=mqtt.MQTTv311)
    forged, sentinel = _token(), _token()
    device_a.publish(T.status(DEVICE_B), forged)  # MQTT 3.1.1 has no way to say "refused"
    device_a.publish(T.status(DEVICE_A), sentinel)
    host.wait_for(sentinel)
    assert not host.got(forged)


def test_device_publishing_a_command_is_refused_while_the_hosts_command_arrives(
    clients: Callable[..., Probe],
) -> None:
    device_a = clients("device_a")
    device_b = clients("device_b")
    assert not device_b.subscribe(f"{T.device(DEVICE_B)}/cmd/+")[0].is_failure
    assert not device_a.subscribe(f"{T.device(DEVICE_A)}/cmd/+")[0].is_failure
    host = clients("host")
    self_command, cross_command, real_command = _token(), _token(), _token()
    assert device_a.publish(T.cmd(DEVICE_A, "deploy"), self_command).value == NOT_AUTHORIZED
    assert device_a.publish(T.cmd(DEVICE_B, "deploy"), cross_command).value == NOT_AUTHORIZED
    assert not host.publish(T.cmd(DEVICE_B, "deploy"), real_command).is_failure
    assert device_b.wait_for(real_command) == T.cmd(DEVICE_B, "deploy")
    assert not device_b.got(cross_command)
    assert not device_a.got(self_command)


def test_device_cannot_pose_as_the_host_or_push_artifact_chunks(
    clients: Callable[..., Probe],
) -> None:
    device_b = clients("device_b")
    device_b.subscribe(T.host_status())
    device_b.subscribe(T.artifact_chunks("a" * 64))
    device_a = clients("device_a")
    fake_status, fake_chunk = _token(), _token()
    assert device_a.publish(T.host_status(), fake_status).value == NOT_AUTHORIZED
    assert device_a.publish(T.artifact_chunks("a" * 64), fake_chunk).value == NOT_AUTHORIZED
    host = clients("host")
    sentinel = _token()
    host.publish(T.host_status(), sentinel)
    device_b.wait_for(sentinel)
    assert not device_b.got(fake_status) and not device_b.got(fake_chunk)


def test_last_will_naming_another_devices_status_is_not_delivered(
    broker: MosquittoProcess, pki: Pki, clients: Callable[..., Probe]
) -> None:
    host = clients("host")
    host.subscribe(f"{T.root}/dev/+/status")
    forged_will, own_will = _token(), _token()
    liar = Probe(
        broker.port, pki.ca, pki.device_a, will_topic=T.status(DEVICE_B), will_payload=forged_will
    )
    honest = Probe(
        broker.port, pki.ca, pki.device_b, will_topic=T.status(DEVICE_B), will_payload=own_will
    )
    assert liar.connect() and honest.connect()
    liar.drop()
    honest.drop()
    assert host.wait_for(own_will) == T.status(DEVICE_B)
    assert not host.got(forged_will)


# -- what a device may read ------------------------------------------------------------------------


def test_device_a_subscribed_to_device_b_commands_receives_none_of_them(
    clients: Callable[..., Probe],
) -> None:
    device_a = clients("device_a")
    device_b = clients("device_b")
    # acl_file grants the SUBACK (Mosquitto checks read access per delivered message, not per
    # subscription); whether granted or refused, nothing of device B's may reach device A.
    device_a.subscribe(f"{T.device(DEVICE_B)}/cmd/+")
    device_a.subscribe(f"{T.device(DEVICE_A)}/cmd/+")
    device_b.subscribe(f"{T.device(DEVICE_B)}/cmd/+")
    host = clients("host")
    for_b, for_a = _token(), _token()
    host.publish(T.cmd(DEVICE_B, "benchmark"), for_b)
    host.publish(T.cmd(DEVICE_A, "benchmark"), for_a)
    assert device_b.wait_for(for_b) == T.cmd(DEVICE_B, "benchmark")
    assert device_a.wait_for(for_a) == T.cmd(DEVICE_A, "benchmark")
    assert not device_a.got(for_b)


def test_device_wildcard_subscription_sees_only_what_it_may_read(
    clients: Callable[..., Probe],
) -> None:
    device_a = clients("device_a")
    device_a.subscribe("#")
    device_b = clients("device_b")
    host = clients("host")
    tokens = [_token() for _ in range(6)]
    device_b.publish(T.status(DEVICE_B), tokens[0])
    device_b.publish(T.telemetry(DEVICE_B), tokens[1])
    host.publish(T.cmd(DEVICE_B, "benchmark"), tokens[2])
    host.publish(T.artifact_chunks("b" * 64), tokens[3])
    host.publish(T.cmd(DEVICE_A, "benchmark"), tokens[4])
    host.publish(T.host_status(), tokens[5])
    device_a.wait_for(tokens[5])
    device_a.wait_for(tokens[4])
    device_a.wait_for(tokens[3])
    assert not any(device_a.got(t) for t in tokens[:3])
    allowed = (f"{T.root}/art/", T.host_status(), f"{T.device(DEVICE_A)}/cmd/")
    assert all(t.startswith(allowed) for t in device_a.topics_received())


# -- what the host may do --------------------------------------------------------------------------


def test_host_reads_every_device_and_publishes_commands_chunks_and_its_status(
    clients: Callable[..., Probe],
) -> None:
    host = clients("host")
    for topic in T.host_subscriptions():
        assert not host.subscribe(topic)[0].is_failure
    device_a = clients("device_a")
    device_a.subscribe(f"{T.device(DEVICE_A)}/cmd/+")
    device_a.subscribe(T.host_status())
    device_a.subscribe(T.artifact_chunks("c" * 64))
    for topic in (T.cmd(DEVICE_A, "benchmark"), T.artifact_chunks("c" * 64), T.host_status()):
        token = _token()
        assert not host.publish(topic, token).is_failure, topic
        assert device_a.wait_for(token) == topic
    response = _token()
    device_a.publish(T.resp(DEVICE_A, "benchmark"), response)
    assert host.wait_for(response) == T.resp(DEVICE_A, "benchmark")


# -- the real host and agent over mutual TLS -------------------------------------------------------


def _agent(
    broker: MosquittoProcess, device_id: str, identity: IssuedCert, data_dir: Path
) -> AgentProcess:
    return AgentProcess(
        f"mqtts://127.0.0.1:{broker.port}",
        device_id,
        data_dir,
        T.base,
        extra_args=[
            "--tls-ca", str(identity.ca_path),
            "--tls-cert", str(identity.cert_path),
            "--tls-key", str(identity.key_path),
        ],
    )  # fmt: skip


def test_real_agent_and_host_meet_over_mutual_tls_and_an_agent_cannot_pose_as_another_device(
    broker: MosquittoProcess, pki: Pki, tmp_path: Path
) -> None:
    tls = TlsOptions(str(pki.ca), str(pki.host.cert_path), str(pki.host.key_path))
    honest = _agent(broker, DEVICE_A, pki.device_a, tmp_path / "honest")
    # Device B's certificate under another id (pi-c): the broker drops all it publishes.
    impostor = _agent(broker, "pi-c", pki.device_b, tmp_path / "impostor")
    with Fleet(f"mqtts://127.0.0.1:{broker.port}", T.base, tls=tls) as fleet, honest, impostor:
        record = fleet.wait_for_device(DEVICE_A, timeout=30)
        assert record.online and record.birth is not None
        with pytest.raises(DeviceUnavailableError, match="never seen"):
            fleet.wait_for_device("pi-c", timeout=3)
        assert impostor.running, "the impostor is silenced by the broker, not crashed"
