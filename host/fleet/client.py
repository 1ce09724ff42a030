"""The host's MQTT side: ``Fleet`` connects to the broker, tracks devices, authenticates what they
send, serves artifact chunks to the devices whose commands name them, and runs the command
pipeline (host.commands) that publishes every command and stores every answer.

Typical use::

    from host.commands.bench import benchmark

    with Fleet("mqtt://127.0.0.1:1883", store=Store()) as fleet:
        fleet.wait_for_device("pi-01", timeout=30)
        result = benchmark(fleet, "pi-01", "model.tflite", eval_path="eval.npz", runs=50)

Protocol duties (see shared/): retained ``online`` on the host status topic with an ``offline``
Last Will; a device registry from retained birth/status and telemetry; every device message
checked against the device's pinned key (pinned on its first signed birth; an unsigned, badly
signed or foreign-signed message is dropped, counted and logged once); chunks served on the
per-artifact topic, coalesced, only to a device with an open command naming the artifact
(host.commands.grants); responses and outputs parts handed to the command driver, which stores
each final answer once and acknowledges it. Replicas on one database pass ``share_group``:
responses and chunk requests then come through MQTT shared subscriptions, each to one replica,
which finds the command and the artifact in the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter, deque
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import msgspec
import paho.mqtt.client as mqtt

from host.artifacts import manifest_for_file
from host.commands.driver import CommandDriver
from host.commands.grants import ChunkGate
from host.commands.keys import HostKeys
from host.errors import ConfigError, DeviceUnavailableError, HostError
from host.fleet.chunk_server import DEFAULT_COALESCE_S, ChunkServer, UnknownArtifactError
from host.fleet.devices import DeviceRecord, DeviceRegistry
from host.fleet.outputs import OutputsCollector
from shared.broker_url import BrokerAddress, TlsOptions, parse_broker_url
from shared.errors import IntegrityError, SignatureError, ValidationError
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import (
    Birth,
    ChunkRequest,
    Message,
    OutputsPart,
    Response,
    Telemetry,
    decode,
)
from shared.mqtt import make_client
from shared.signing import verify_message
from shared.topics import (
    DEFAULT_BASE,
    STATUS_OFFLINE,
    STATUS_ONLINE,
    Topics,
    check_device_id,
    check_share_group,
)
from shared.transfer import DEFAULT_CHUNK_SIZE, check_chunk_size

if TYPE_CHECKING:
    from host.store import Store

logger = logging.getLogger(__name__)

STATE_SUFFIXES = ("/status", "/birth", "/telemetry")
PIN_RECHECK_S = 2.0  # a device whose key changed has its pin read from the database again


def subscription_qos(topic: str) -> int:
    """QoS 0 for the device state topics, QoS 1 for responses and chunk requests.

    On subscribing, a broker sends every retained status and birth at the subscription's QoS; at
    QoS 1 Mosquitto 2.0 keeps 20 in flight and 1,000 queued per client and drops the rest, so a
    host starting beside 1,000 online boards learned 20 of them (bench.fleet). At QoS 0 all 2,000
    arrive. State loses nothing at QoS 0: it is retained, so a reconnect delivers it again, and
    telemetry is periodic.
    """
    return 0 if topic.endswith(STATE_SUFFIXES) else 1


class FleetConnectionError(HostError):
    """The broker cannot be reached, refused the connection, or the connection was lost."""


class Fleet:
    """A host's connection to its fleet; use as a context manager (connects on enter).

    With a store it runs the command pipeline (``fleet.commands``, host.commands.CommandDriver);
    without one, or with ``commands=False`` (``edgetailor devices``, ``status``), it only watches
    devices and publishes no command.
    """

    def __init__(
        self,
        broker_url: str,
        base_topic: str = DEFAULT_BASE,
        store: Store | str | None = None,
        tls: TlsOptions | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
        keepalive: int = 30,
        connect_timeout: float = 10.0,
        client_id: str | None = None,
        outputs_dir: str | os.PathLike[str] | None = None,
        share_group: str | None = None,
        commands: bool = True,
    ) -> None:
        self.address: BrokerAddress = parse_broker_url(broker_url)
        self.topics = Topics(base_topic)
        self.tls = (tls or TlsOptions()).check()
        self.chunk_size = check_chunk_size(chunk_size)
        self.share_group = check_share_group(share_group) if share_group else None
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.client_id = client_id or f"edgetailor-host-{uuid.uuid4().hex[:12]}"
        self._owns_store = isinstance(store, str)
        if isinstance(store, str):
            from host.store import Store as _Store

            store = _Store(store)
        self.store: Store | None = store
        self.registry = DeviceRegistry()
        self.chunks = ChunkServer(
            self._publish_chunk, coalesce_s=coalesce_s, ready=self._connected_now
        )
        if outputs_dir is None:
            from host.security import edgetailor_home

            outputs_dir = edgetailor_home() / "outputs"
        self.outputs = OutputsCollector(Path(outputs_dir))
        # Made on first use ($EDGETAILOR_HOME/keys/signing.key) unless --signing-key names one.
        self.keys: HostKeys | None = HostKeys(signing_key) if commands else None
        self.dropped: Counter[tuple[str, str]] = Counter()  # (topic kind, reason) -> messages
        self._pins: dict[str, str | None] = {}  # device -> pinned key (None: none in the store)
        self._pin_checked: dict[str, float] = {}
        self._warned: set[tuple[str, str]] = set()
        self._commands: CommandDriver | None = None
        self.gate: ChunkGate | None = None
        if store is not None and self.keys is not None:
            self.gate = ChunkGate(self._lookup_grant)
            self._commands = CommandDriver(
                store, self, self.keys, gate=self.gate, outputs=self.outputs
            )
        self._client: mqtt.Client | None = None
        self._connack = threading.Event()
        self._connack_reason: str | None = None
        self._connected = threading.Event()
        self._pending_subs: set[int] = set()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._recent_commands: deque[mqtt.MQTTMessageInfo] = deque(maxlen=4096)
        self._digests: dict[tuple[str, int, int, int], str] = {}
        self._manifests: dict[tuple[str, int, int, int], ArtifactManifest] = {}
        self._recorded: set[tuple[bytes, str]] = set()  # (manifest, path) in the store already

    @property
    def commands(self) -> CommandDriver:
        """The command pipeline of this fleet (needs a store)."""
        if self._commands is None:
            raise ConfigError(
                "commands are recorded in the database: give the Fleet a store (--db, or "
                "EDGETAILOR_DB)"
            )
        return self._commands

    # -- connection ----------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        """Connect and wait for a successful CONNACK; raise FleetConnectionError otherwise."""
        client = make_client(
            self.client_id,
            self.address,
            self.tls,
            will=(self.topics.host_status(), STATUS_OFFLINE, 1),
        )
        client.reconnect_delay_set(0.5, 10)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        self._client = client
        self._connack.clear()
        try:
            client.connect(self.address.host, self.address.port, keepalive=self.keepalive)
        except (OSError, ValueError) as exc:
            self._client = None
            raise FleetConnectionError(
                f"cannot reach the MQTT broker at {self.address}: {exc}; check that it is "
                "running and that --broker names the right host and port"
            ) from exc
        client.loop_start()
        if self._commands is not None:
            self._commands.start()
        if not self._connack.wait(self.connect_timeout) or self._connack_reason is not None:
            reason = self._connack_reason or f"no CONNACK within {self.connect_timeout:.0f} s"
            client.loop_stop()
            client.disconnect()
            self._client = None
            if self._commands is not None:
                self._commands.stop()
            raise FleetConnectionError(
                f"the MQTT broker at {self.address} refused the connection: {reason}; check "
                "the credentials in the URL, the TLS options and the broker's ACL"
            )
        logger.info("connected to %s as %s", self.address, self.client_id)

    def close(self) -> None:
        """Store and acknowledge the answers received, publish the retained ``offline`` status
        and disconnect (idempotent)."""
        if self._commands is not None:
            self._commands.stop()
        self.chunks.close()
        client, self._client = self._client, None
        if client is not None:
            with self._lock:
                unconfirmed = [i for i in self._recent_commands if not i.is_published()]
                self._recent_commands.clear()
            deadline = time.monotonic() + 3.0
            for info in unconfirmed:
                try:
                    info.wait_for_publish(timeout=max(0.0, deadline - time.monotonic()))
                except (RuntimeError, ValueError):
                    break  # not connected: what is open goes out again from the database
            if self._connected.is_set():
                info = client.publish(self.topics.host_status(), STATUS_OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=3)
                except (RuntimeError, ValueError):
                    logger.warning("could not publish the host's offline status before leaving")
            client.disconnect()
            client.loop_stop()
        self._connected.clear()
        if self._owns_store and self.store is not None:
            self.store.close()

    def _on_connect(
        self, client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        if reason.is_failure:
            logger.error("broker %s refused the connection: %s", self.address, reason)
            self._connack_reason = str(reason)
            self._connack.set()
            return
        self._connack_reason = None
        with self._lock:
            self._pending_subs.clear()
            self._subscribed.clear()
            for topic in self.topics.host_subscriptions(share_group=self.share_group):
                _rc, mid = client.subscribe(topic, qos=subscription_qos(topic))
                self._pending_subs.add(mid)
        client.publish(self.topics.host_status(), STATUS_ONLINE, qos=1, retain=True)
        self._connected.set()
        self._connack.set()
        self.chunks.wake()

    def _on_disconnect(
        self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
    ) -> None:
        self._connected.clear()
        if self._client is not None:
            logger.warning("lost the broker %s (%s); reconnecting", self.address, reason)

    def _on_subscribe(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _codes: Any, _props: Any
    ) -> None:
        with self._lock:
            self._pending_subs.discard(mid)
            if not self._pending_subs:
                self._subscribed.set()

    def wait_synced(self, timeout: float = 5.0, settle_s: float = 0.5) -> None:
        """Wait until subscriptions are acknowledged and retained birth/status had time to arrive."""
        if not self._subscribed.wait(timeout):
            raise FleetConnectionError(
                f"the broker at {self.address} did not confirm subscriptions"
            )
        time.sleep(settle_s)

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _require_client(self) -> mqtt.Client:
        if self._client is None:
            raise FleetConnectionError(
                "the fleet is not connected; use `with Fleet(...)` or connect()"
            )
        return self._client

    def publish_command(self, device_id: str, name: str, payload: bytes) -> None:
        """Publish a signed command envelope (host.commands.CommandDriver, the only caller)."""
        topic = self.topics.cmd(check_device_id(device_id), name)
        client = self._client
        if client is None:
            return  # closing: the command is open in the database and goes out next time
        info = client.publish(topic, payload, qos=1)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps the QoS 1 message and sends it after reconnecting.
            logger.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))
        with self._lock:
            self._recent_commands.append(info)

    def expect_artifact(self, sha256: str, device_id: str) -> None:
        """A command naming this artifact went to this device: it will likely ask for it soon."""
        self.chunks.expect(sha256, device_id)

    def _publish_chunk(self, sha256: str, frame: bytes) -> mqtt.MQTTMessageInfo | None:
        client = self._client
        if client is None:
            return None  # closing
        return client.publish(self.topics.artifact_chunks(sha256), frame, qos=1)

    def _connected_now(self) -> bool:
        return self._connected.is_set()

    def _on_publish(
        self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any
    ) -> None:
        self.chunks.wake(mid)  # the chunk server may hand over the next frame

    # -- devices -------------------------------------------------------------------------------
    def devices(self) -> dict[str, DeviceRecord]:
        """Every device heard from since connecting: online flag, birth, last telemetry, last seen."""
        return self.registry.snapshot()

    def wait_for_device(self, device_id: str, timeout: float = 30.0) -> DeviceRecord:
        """The device's record once it is online and has sent its birth; DeviceUnavailableError else."""
        check_device_id(device_id)
        record = self.registry.wait_for(device_id, timeout)
        if record is None:
            seen = self.registry.get(device_id)
            state = (
                "never seen"
                if seen is None
                else ("offline" if not seen.online else "without a birth message")
            )
            raise DeviceUnavailableError(
                f"device {device_id!r} is {state} on {self.address} (base topic "
                f"{self.topics.base!r}) after {timeout:.0f} s; check that its agent runs and uses "
                "the same broker and base topic"
            )
        return record

    # -- artifacts -----------------------------------------------------------------------------
    def offer(
        self, path: str | Path, manifest: ArtifactManifest | None = None, *, verify: bool = True
    ) -> ArtifactManifest:
        """Serve ``path`` to devices under ``manifest.sha256`` (built from the file when None).

        With ``verify`` the file's size and sha256 are checked against the manifest first. Returns
        the manifest as given or built; the command driver signs it, with the key each device
        pins, when it publishes a command naming it.
        """
        path = Path(path)
        if manifest is None:
            manifest = self._manifest_of(path)
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read artifact {path}: {exc}") from exc
        size = stat.st_size
        if verify and (size != manifest.size_bytes or self._digest(path, stat) != manifest.sha256):
            raise IntegrityError(
                f"{path} does not match its manifest (sha256 {manifest.sha256[:12]}, "
                f"{manifest.size_bytes} bytes); rebuild the manifest from the file"
            )
        self.chunks.offer(manifest.sha256, path)
        if self.store is not None:
            # A rollout offers one artifact per device: it is recorded once per manifest and path.
            record = msgspec.to_builtins(manifest)
            key = (msgspec.json.encode(record), str(path.resolve()))
            with self._lock:
                known = key in self._recorded
            if not known:
                self.store.add_artifact(record, key[1])
                with self._lock:
                    if len(self._recorded) >= 1024:
                        self._recorded.clear()
                    self._recorded.add(key)
        return manifest

    def _manifest_of(self, path: Path) -> ArtifactManifest:
        """The manifest of a file, built again only when the file changed since (a campaign's
        device threads offer the same candidate at the same moment: it is hashed and parsed
        once, not once per device)."""
        try:
            stat = path.stat()
        except OSError as exc:
            raise ConfigError(f"cannot read artifact {path}: {exc}") from exc
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            known = self._manifests.get(key)
        if known is not None:
            return known
        built_at = time.time_ns()
        manifest = manifest_for_file(path)
        if stat.st_mtime_ns < built_at - 1_000_000_000:  # see _digest: racy file times
            with self._lock:
                if len(self._manifests) >= 1024:
                    self._manifests.clear()
                self._manifests[key] = manifest
        return manifest

    def _digest(self, path: Path, stat: os.stat_result) -> str:
        """sha256 of the file, hashed again only when it changed since the last offer.

        A rollout offers the same artifact to every device of a wave; hashing a 20 MB file before
        each command spread the commands, and so the boards' fetches, over a second.
        """
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)
        with self._lock:
            known = self._digests.get(key)
        if known is not None:
            return known
        hashed_at = time.time_ns()
        digest = sha256_file(path)
        # File times tick coarsely: a file written within the last second could be written again
        # with the same size and time, so only an older one is remembered (as git's racy check).
        if stat.st_mtime_ns < hashed_at - 1_000_000_000:
            with self._lock:
                if len(self._digests) >= 1024:
                    self._digests.clear()
                self._digests[key] = digest
        return digest

    # -- incoming ------------------------------------------------------------------------------
    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._client is None:
            return  # closing
        try:
            parsed = self.topics.parse(msg.topic)
        except ValidationError as exc:
            logger.debug("ignored a message on %s: %s", msg.topic, exc)
            return
        device_id = parsed.device_id
        if device_id is None or parsed.kind == "cmd":
            return
        try:
            if parsed.kind == "status":
                self._on_status(device_id, msg.payload)
            elif msg.payload:
                try:
                    message = decode(msg.payload)
                except ValidationError as exc:
                    self._drop(parsed.kind, device_id, "malformed", str(exc))
                    return
                if self._progress(parsed.kind, message) and self._commands is not None:
                    # Checked by the command driver, if still worth it when its batch is written.
                    self._commands.on_message(
                        device_id,
                        message,
                        check=lambda: self._authentic("resp", device_id, message),
                    )
                elif self._authentic(parsed.kind, device_id, message):
                    self._on_envelope(parsed.kind, device_id, message)
        except Exception:  # the paho thread must survive anything one message does
            logger.exception("failed to handle a message on %s", msg.topic)

    @staticmethod
    def _progress(kind: str, message: Message) -> bool:
        """A progress response: of several for one command that arrive together only the last
        is worth its signature check, which the command driver runs when it writes them."""
        body = message.body
        return kind == "resp" and isinstance(body, Response) and body.status == "progress"

    def _drop(self, kind: str, device_id: str, reason: str, why: str) -> None:
        """Count a dropped message (on /metrics) and log it once per device and reason."""
        with self._lock:
            self.dropped[(kind, reason)] += 1
            first = (device_id, reason) not in self._warned
            if first:
                if len(self._warned) > 10_000:
                    self._warned.clear()
                self._warned.add((device_id, reason))
        if first:
            logger.warning("dropped a %s message of %s (%s): %s", kind, device_id, reason, why)
        else:
            logger.debug("dropped a %s message of %s (%s): %s", kind, device_id, reason, why)

    def drop_counts(self) -> dict[tuple[str, str], int]:
        """Messages dropped since connecting, by topic kind and reason (host /metrics)."""
        with self._lock:
            counts = dict(self.dropped)
        if self._commands is not None:
            for reason, n in self._commands.dropped.items():
                counts[("resp", reason)] = counts.get(("resp", reason), 0) + n
        return counts

    def _pinned(self, device_id: str, *, again: bool = False) -> str | None:
        """The key pinned for a device, from memory or (first time, or ``again``) the store."""
        with self._lock:
            if device_id in self._pins and not again:
                return self._pins[device_id]
        key = self.store.device_key(device_id) if self.store is not None else None
        with self._lock:
            self._pins[device_id] = key
            self._pin_checked[device_id] = time.monotonic()
        return key

    def _authentic(self, kind: str, device_id: str, message: Message) -> bool:
        """Whether a device's message is signed by the key pinned for it (pinning it on the
        first signed birth); anything else is dropped, counted and logged once."""
        if message.device_id != device_id:
            self._drop(kind, device_id, "misaddressed",
                       f"it names device {message.device_id!r} on {device_id}'s topic")  # fmt: skip
            return False
        pinned = self._pinned(device_id)
        if message.auth is None:
            if pinned is None and kind in ("birth", "telemetry"):
                key = (device_id, "predates_signing")
                if key not in self._warned:
                    self._warned.add(key)
                    logger.warning(
                        "device %s sends unsigned messages: its agent predates signing and "
                        "refuses this host's signed commands; update it", device_id,
                    )  # fmt: skip
                return True  # shown as a device, never answered for
            self._drop(kind, device_id, "unsigned",
                       "unsigned (an agent that predates signing, or a forgery)")  # fmt: skip
            return False
        try:
            key = verify_message(message, trusted={pinned} if pinned else None, device_id=device_id)
        except SignatureError as exc:
            if exc.code == "untrusted_key" and pinned is not None:
                # Unpinned meanwhile (edgetailor devices --forget) by this or another process?
                last = self._pin_checked.get(device_id, 0.0)
                if time.monotonic() - last > PIN_RECHECK_S:
                    now_pinned = self._pinned(device_id, again=True)
                    if now_pinned != pinned:
                        if now_pinned is None:
                            self._refetch_birth(device_id)
                        return self._authentic(kind, device_id, message)
            self._drop(kind, device_id, exc.code, str(exc))
            return False
        if pinned is None and kind != "birth":
            # A key is pinned by the write that stores the device's first signed birth.
            self._drop(kind, device_id, "not_pinned",
                       f"signed by {key[:8]}..., but no birth of this device pinned a key yet")  # fmt: skip
            return False
        return True

    def _refetch_birth(self, device_id: str) -> None:
        """Subscribe to the device's birth again: the broker sends the retained one, whose
        signature pins the device's (new) key."""
        client = self._client
        if client is not None:
            topic = self.topics.birth(device_id)
            client.subscribe(topic, qos=subscription_qos(topic))

    def _on_status(self, device_id: str, payload: bytes) -> None:
        if payload not in (STATUS_ONLINE, STATUS_OFFLINE):
            return  # an empty payload clears the retained status; nothing to learn
        online = payload == STATUS_ONLINE
        known = self.registry.get(device_id)
        came_back = online and (known is None or not known.online)
        # Store first: whoever wakes up on the registry may read the database next.
        if self.store is not None:
            self.store.upsert_device(device_id, online=online)
        self.registry.set_status(device_id, online)
        if came_back and self._commands is not None:
            self._commands.device_online(device_id)

    def _on_envelope(self, kind: str, device_id: str, message: Message) -> None:
        body = message.body
        if kind == "birth" and isinstance(body, Birth):
            if self.store is not None:
                key = message.auth.key if message.auth is not None else None
                pinned = self.store.upsert_device(
                    device_id, birth=msgspec.to_builtins(body), device_key=key
                )
                with self._lock:
                    self._pins[device_id] = pinned
                if key is not None and pinned != key:
                    self._drop(kind, device_id, "untrusted_key",
                               "its birth is signed by another key than the one pinned")  # fmt: skip
                    return
            self.registry.set_birth(device_id, body)
            if self._commands is not None:
                self._commands.device_online(device_id)
        elif kind == "telemetry" and isinstance(body, Telemetry):
            if self.store is not None:
                self.store.upsert_device(
                    device_id, online=True, telemetry=msgspec.to_builtins(body)
                )
            self.registry.set_telemetry(device_id, body)
        elif kind == "xfer_req" and isinstance(body, ChunkRequest):
            self._on_chunk_request(device_id, message, body)
        elif kind == "resp" and isinstance(body, Response | OutputsPart):
            if self._commands is not None:
                self._commands.on_message(device_id, message)
        else:
            self._drop(kind, device_id, "wrong_topic", f"{message.schema} on a {kind} topic")

    def _on_chunk_request(self, device_id: str, message: Message, request: ChunkRequest) -> None:
        if self.gate is None:
            self._drop("xfer_req", device_id, "no_command", "this host sends no commands")
            return
        allowed, reason = self.gate.admit(device_id, request)
        if reason is not None:
            self._drop("xfer_req", device_id, reason,
                       f"chunks of {request.sha256[:12]}: no open command of this device names "
                       "it" if reason == "no_command" else
                       f"chunks of {request.sha256[:12]} sent to it too often already")  # fmt: skip
            return
        if len(allowed) != len(request.indices):
            request = msgspec.structs.replace(request, indices=allowed)
        try:
            if not self.chunks.offers(request.sha256):
                self._offer_from_store(request.sha256)
            scheduled = self.chunks.handle(device_id, request, sent_at=message.ts)
            self.gate.charge(device_id, request.sha256, request.chunk_size, scheduled)
        except UnknownArtifactError as exc:
            self._drop("xfer_req", device_id, "unknown_artifact", str(exc))
        except ValidationError as exc:
            self._drop("xfer_req", device_id, "bad_request", str(exc))

    def _lookup_grant(self, device_id: str, sha256: str) -> tuple[str, float | None] | None:
        """The open command of this device naming this artifact, from the database (it may have
        been published by another process on it)."""
        if self._commands is None:
            return None
        due = self._commands.commands.grant_for(device_id, sha256)
        return None if due is None else (due.command_id, due.expires_at)

    def _offer_from_store(self, sha256: str) -> None:
        """Serve an artifact another host process offered, from the path the database records.

        Replicas sharing the chunk requests (``share_group``) each get some of them: the one that
        gets a request serves it, whichever replica sent the command.
        """
        if self.store is None:
            return
        known = self.store.get_artifact(sha256)
        path = known.get("path") if known else None
        if not path:
            return
        try:
            self.chunks.offer(sha256, path)
        except OSError as exc:
            logger.warning("artifact %s recorded at %s cannot be read: %s", sha256[:12], path, exc)


__all__ = ["Fleet", "FleetConnectionError", "subscription_qos"]
