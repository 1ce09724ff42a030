"""The host's MQTT side: ``Fleet`` connects to the broker, tracks devices, serves artifact chunks,
sends commands and collects their results.

Typical use::

    with Fleet("mqtt://127.0.0.1:1883", store=Store()) as fleet:
        fleet.wait_for_device("pi-01", timeout=30)
        job = fleet.submit_benchmark("pi-01", "model.tflite", eval_path="eval.npz", runs=50)
        job.on_progress(lambda job, stage, data: print(stage))
        result = job.result(timeout=600)   # BenchmarkResult, or JobFailedError / JobTimeoutError

Protocol duties (see shared/ and DESIGN.md): retained ``online`` on the host status topic with an
``offline`` Last Will; device registry from retained birth/status and telemetry; chunks served on
the per-artifact topic, coalesced; each final response stored (deduplicated by response msg_id and
by job id), delivered to its caller once, then acknowledged with ``cmd.ack`` so the agent can drop
it from its outbox. Final responses for jobs this host neither submitted nor finds in its store are
left unacknowledged: they belong to another host process, which must get the chance to store them.
Replicas on one database pass ``share_group``: responses and chunk requests then come through MQTT
shared subscriptions, each to one replica, which finds the job and the artifact in the database.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import msgspec
import paho.mqtt.client as mqtt

from host.artifacts import manifest_for_file, resolve_signing_key
from host.errors import ConfigError, DeviceUnavailableError, HostError
from host.fleet.chunk_server import DEFAULT_COALESCE_S, ChunkServer, UnknownArtifactError
from host.fleet.devices import DeviceRecord, DeviceRegistry
from host.fleet.jobs import JobHandle, JobTracker
from host.fleet.outputs import OutputsCollector
from shared.broker_url import BrokerAddress, TlsOptions, parse_broker_url
from shared.errors import IntegrityError, ValidationError
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import (
    AckCmd,
    BenchmarkCmd,
    Birth,
    Body,
    ChunkRequest,
    ErrorInfo,
    Message,
    OutputsPart,
    Response,
    Telemetry,
    decode,
    encode,
    new_msg_id,
    schema_of,
)
from shared.mqtt import make_client
from shared.signing import sign_manifest
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
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from host.store import Store

logger = logging.getLogger(__name__)

ResultListener = Callable[[JobHandle, Response], None]
STAGE_WRITE_S = 0.2  # how often progress stages reach the store
STATE_SUFFIXES = ("/status", "/birth", "/telemetry")


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
    """A host's connection to its fleet; use as a context manager (connects on enter)."""

    def __init__(
        self,
        broker_url: str,
        base_topic: str = DEFAULT_BASE,
        store: Store | str | None = None,
        tls: TlsOptions | None = None,
        signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
        keepalive: int = 30,
        connect_timeout: float = 10.0,
        client_id: str | None = None,
        outputs_dir: str | os.PathLike[str] | None = None,
        share_group: str | None = None,
    ) -> None:
        self.address: BrokerAddress = parse_broker_url(broker_url)
        self.topics = Topics(base_topic)
        self.tls = (tls or TlsOptions()).check()
        self.signing_key = resolve_signing_key(signing_key)
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
        self.jobs = JobTracker()
        self.chunks = ChunkServer(
            self._publish_chunk, coalesce_s=coalesce_s, ready=self._connected_now
        )
        if outputs_dir is None:
            from host.security import edgetailor_home

            outputs_dir = edgetailor_home() / "outputs"
        self.outputs = OutputsCollector(Path(outputs_dir))
        self._result_listeners: list[ResultListener] = []
        self._client: mqtt.Client | None = None
        self._connack = threading.Event()
        self._connack_reason: str | None = None
        self._connected = threading.Event()
        self._pending_subs: set[int] = set()
        self._subscribed = threading.Event()
        self._lock = threading.Lock()
        self._unconfirmed_acks: list[mqtt.MQTTMessageInfo] = []
        self._digests: dict[tuple[str, int, int, int], str] = {}
        self._recorded: set[tuple[bytes, str]] = set()  # (manifest, path) in the store already
        # Progress stages waiting to be written, newest per job: one transaction per interval
        # instead of one commit per progress message on the network thread.
        self._stages: dict[str, str] = {}
        self._stages_stop = threading.Event()
        self._stage_writer: threading.Thread | None = None

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
        if self.store is not None and self._stage_writer is None:
            self._stages_stop.clear()
            self._stage_writer = threading.Thread(
                target=self._write_stages_forever, name="fleet-stages", daemon=True
            )
            self._stage_writer.start()
        if not self._connack.wait(self.connect_timeout) or self._connack_reason is not None:
            reason = self._connack_reason or f"no CONNACK within {self.connect_timeout:.0f} s"
            client.loop_stop()
            client.disconnect()
            self._client = None
            raise FleetConnectionError(
                f"the MQTT broker at {self.address} refused the connection: {reason}; check "
                "the credentials in the URL, the TLS options and the broker's ACL"
            )
        logger.info("connected to %s as %s", self.address, self.client_id)

    def close(self) -> None:
        """Publish the retained ``offline`` status and disconnect (idempotent)."""
        self.chunks.close()
        client, self._client = self._client, None
        if client is not None:
            with self._lock:
                unconfirmed, self._unconfirmed_acks = self._unconfirmed_acks, []
            for info in unconfirmed:
                try:
                    info.wait_for_publish(timeout=3)
                except (RuntimeError, ValueError):
                    break  # not connected: the agent re-sends, the next host acks
            if self._connected.is_set():
                info = client.publish(self.topics.host_status(), STATUS_OFFLINE, qos=1, retain=True)
                try:
                    info.wait_for_publish(timeout=3)
                except (RuntimeError, ValueError):
                    logger.warning("could not publish the host's offline status before leaving")
            client.disconnect()
            client.loop_stop()
        self._connected.clear()
        writer, self._stage_writer = self._stage_writer, None
        if writer is not None:
            self._stages_stop.set()
            writer.join(timeout=10)
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

    def _publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        info = self._require_client().publish(topic, payload, qos=1, retain=retain)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            # NO_CONN: paho keeps the QoS 1 message and sends it after reconnecting.
            logger.warning("publish to %s failed: %s", topic, mqtt.error_string(info.rc))

    def publish_command(self, device_id: str, name: str, payload: bytes) -> None:
        """Publish a command envelope the caller built and recorded (host.deploy.driver sends the
        same envelope again after a restart; the agent's journal runs it once)."""
        self._publish(self.topics.cmd(check_device_id(device_id), name), payload)

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
        the manifest, signed when the fleet has a signing key and the manifest was not signed yet.
        """
        path = Path(path)
        if manifest is None:
            manifest = manifest_for_file(path, signing_key=self.signing_key)
        elif self.signing_key is not None and manifest.signature is None:
            manifest = sign_manifest(manifest, self.signing_key)
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

    # -- commands and jobs ---------------------------------------------------------------------
    def on_result(self, listener: ResultListener) -> None:
        """``listener(handle, response)`` once per finished job submitted by this Fleet."""
        self._result_listeners.append(listener)

    def send_command(
        self,
        device_id: str,
        body: Body,
        *,
        job_id: str | None = None,
        on_progress: Callable[[JobHandle, str, dict[str, Any]], None] | None = None,
    ) -> JobHandle:
        """Send any ``cmd.*`` body; the returned handle's ``wait(timeout)`` gives the final Response.

        ``cmd.ack`` is fire-and-forget (acks are not answered); its handle never finishes.
        """
        check_device_id(device_id)
        schema = schema_of(body)
        if not schema.startswith("cmd."):
            raise ConfigError(f"{schema} is not a command")
        name = schema.removeprefix("cmd.")
        msg_id = new_msg_id()
        job_id = job_id or getattr(body, "job_id", None) or msg_id
        payload = encode(body, device_id=device_id, msg_id=msg_id)
        try:
            decode(payload)  # struct constructors skip the wire constraints; check them here
        except ValidationError as exc:
            raise ConfigError(f"invalid {schema} command: {exc}") from exc
        topic = self.topics.cmd(device_id, name)
        handle = JobHandle(
            job_id=job_id,
            device_id=device_id,
            command_msg_id=msg_id,
            kind=name,
            command_topic=topic,
            command_payload=payload,
        )
        if on_progress is not None:
            handle.on_progress(on_progress)  # before publishing: progress may come back at once
        for name_of_artifact in ("model", "eval_data"):
            manifest = getattr(body, name_of_artifact, None)
            if isinstance(manifest, ArtifactManifest):
                self.chunks.expect(manifest.sha256, device_id)  # it will ask for the chunks soon
        if name != "ack":
            self.jobs.add(handle)
            if self.store is not None:
                model = getattr(body, "model", None)
                eval_data = getattr(body, "eval_data", None)
                params = {
                    k: v
                    for k, v in msgspec.to_builtins(body).items()
                    if k not in ("model", "eval_data", "job_id")
                }
                self.store.create_job(
                    job_id=job_id,
                    command_msg_id=msg_id,
                    device_id=device_id,
                    kind=name,
                    model_sha256=model.sha256 if model is not None else None,
                    eval_sha256=eval_data.sha256 if eval_data is not None else None,
                    params=params,
                )
        self._publish(topic, payload)
        logger.info("sent cmd.%s %s to %s (job %s)", name, msg_id, device_id, job_id)
        return handle

    def submit_benchmark(
        self,
        device_id: str,
        model_path: str | Path,
        model_manifest: ArtifactManifest | None = None,
        eval_path: str | Path | None = None,
        eval_manifest: ArtifactManifest | None = None,
        threads: int | None = None,
        runs: int = 50,
        timeout_s: float = 300.0,
        *,
        warmup_runs: int = 1,
        warmup_s: float = 0.5,
        min_s: float = 1.0,
        eval_limit: int | None = None,
        task: str | None = None,
        return_outputs: bool = False,
        chunk_size: int | None = None,
        device_timeout_s: float = 15.0,
        verify_artifacts: bool = True,
        on_progress: Callable[[JobHandle, str, dict[str, Any]], None] | None = None,
    ) -> JobHandle:
        """Offer the model (and eval data), send cmd.benchmark, return the job's handle.

        Waits up to ``device_timeout_s`` for the device to be online. ``verify_artifacts=False``
        serves files whose hash does not match their manifest (only tests want that: the device
        must then refuse them).
        """
        self.wait_for_device(device_id, device_timeout_s)
        model = self.offer(model_path, model_manifest, verify=verify_artifacts)
        eval_data = None
        if eval_path is not None:
            eval_data = self.offer(eval_path, eval_manifest, verify=verify_artifacts)
        try:
            command = msgspec.convert(
                {
                    "job_id": f"job-{uuid.uuid4().hex[:20]}",
                    "model": msgspec.to_builtins(model),
                    "eval_data": msgspec.to_builtins(eval_data) if eval_data else None,
                    "chunk_size": chunk_size or self.chunk_size,
                    "threads": threads,
                    "warmup_runs": warmup_runs,
                    "warmup_s": warmup_s,
                    "runs": runs,
                    "min_s": min_s,
                    "timeout_s": timeout_s,
                    "eval_limit": eval_limit,
                    "task": task,
                    "return_outputs": return_outputs,
                },
                BenchmarkCmd,
            )
        except msgspec.ValidationError as exc:
            raise ConfigError(f"invalid benchmark settings: {exc}") from exc
        return self.send_command(device_id, command, on_progress=on_progress)

    # -- incoming ------------------------------------------------------------------------------
    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if self._client is None:
            return  # closing
        try:
            parsed = self.topics.parse(msg.topic)
            device_id = parsed.device_id
            if device_id is None:
                return
            if parsed.kind == "status":
                self._on_status(device_id, msg.payload)
            elif parsed.kind == "resp" and parsed.name == "xfer":
                return  # our own answers to chunk requests
            elif msg.payload:
                self._on_envelope(parsed.kind, device_id, decode(msg.payload))
        except ValidationError as exc:
            logger.warning("ignored a message on %s: %s", msg.topic, exc)
        except Exception:  # the paho thread must survive anything one message does
            logger.exception("failed to handle a message on %s", msg.topic)

    def _on_status(self, device_id: str, payload: bytes) -> None:
        if payload not in (STATUS_ONLINE, STATUS_OFFLINE):
            return  # an empty payload clears the retained status; nothing to learn
        online = payload == STATUS_ONLINE
        known = self.registry.get(device_id)
        came_back = online and known is not None and not known.online
        # Store first: whoever wakes up on the registry may read the database next.
        if self.store is not None:
            self.store.upsert_device(device_id, online=online)
        self.registry.set_status(device_id, online)
        if came_back:
            self._resend_pending(device_id)

    def _resend_pending(self, device_id: str) -> None:
        """Send again the unfinished commands of a device that was offline.

        A command published while the device was away (its Will not yet fired, or a clean session
        after a reconnect) is lost by the broker; the agent journals command ids, so one it did get
        is not executed twice, and one already done has its result re-sent.
        """
        for handle in self.jobs.pending():
            if handle.device_id == device_id and handle.command_payload:
                logger.info(
                    "device %s is back: re-sending cmd.%s %s",
                    device_id,
                    handle.kind,
                    handle.command_msg_id,
                )
                self._publish(handle.command_topic, handle.command_payload)

    def _on_envelope(self, kind: str, device_id: str, message: Message) -> None:
        body = message.body
        if kind == "birth" and isinstance(body, Birth):
            if self.store is not None:
                self.store.upsert_device(device_id, birth=msgspec.to_builtins(body))
            self.registry.set_birth(device_id, body)
        elif kind == "telemetry" and isinstance(body, Telemetry):
            if self.store is not None:
                self.store.upsert_device(
                    device_id, online=True, telemetry=msgspec.to_builtins(body)
                )
            self.registry.set_telemetry(device_id, body)
        elif kind == "xfer_req" and isinstance(body, ChunkRequest):
            self._on_chunk_request(device_id, message, body)
        elif kind == "resp" and isinstance(body, Response):
            self._on_response(device_id, message, body)
        elif kind == "resp" and isinstance(body, OutputsPart):
            self._on_outputs_part(device_id, message, body)
        else:
            logger.warning(
                "ignored %s message from %s on a %s topic", message.schema, device_id, kind
            )

    def _on_chunk_request(self, device_id: str, message: Message, request: ChunkRequest) -> None:
        try:
            if not self.chunks.offers(request.sha256):
                self._offer_from_store(request.sha256)
            self.chunks.handle(device_id, request, sent_at=message.ts)
        except UnknownArtifactError as exc:
            logger.warning("%s", exc)
            self._answer_xfer(device_id, message.msg_id, "unknown_artifact", str(exc))
        except ValidationError as exc:
            logger.warning("bad chunk request from %s: %s", device_id, exc)
            self._answer_xfer(device_id, message.msg_id, "bad_request", str(exc))

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

    def _answer_xfer(self, device_id: str, corr_id: str, code: str, text: str) -> None:
        response = Response(status="error", error=ErrorInfo(code=code, message=text[:4096]))
        self._publish(
            self.topics.resp(device_id, "xfer"),
            encode(response, device_id=device_id, corr_id=corr_id),
        )

    def _on_response(self, device_id: str, message: Message, response: Response) -> None:
        handle = self.jobs.by_command(message.corr_id)
        if response.status == "progress":
            if handle is not None:
                handle._progress(response.data or {})
                if self.store is not None:
                    self._note_stage(handle.job_id, handle.stage)
            elif self.store is not None and message.corr_id is not None:
                # A job recorded by another part of the host (the deployment driver) or another
                # replica: its stage is read from the store.
                stored = self.store.find_job_by_command(message.corr_id)
                if stored is not None:
                    stage = str((response.data or {}).get("stage", "progress"))[:16]
                    self._note_stage(stored.job_id, stage)
            return
        job_id = handle.job_id if handle is not None else None
        if job_id is None and self.store is not None and message.corr_id is not None:
            stored = self.store.find_job_by_command(message.corr_id)
            job_id = stored.job_id if stored is not None else None
        if job_id is None:
            logger.debug("final response %s from %s is for another host", message.msg_id, device_id)
            return
        if self.store is not None:
            error = response.error
            self.store.record_result(
                job_id=job_id,
                response_msg_id=message.msg_id,
                device_id=device_id,
                status=response.status,
                data=response.data,
                error_code=error.code if error else None,
                error_message=error.message if error else None,
            )
        # Stored first, acknowledged second: the agent may forget it only now. The ack goes out
        # before the caller is woken, so a caller that exits right away does not lose it.
        self._ack(device_id, message.msg_id)
        if handle is not None and self.jobs.claim_final(job_id, message.msg_id):
            handle._finish(response, message.msg_id)
            for listener in list(self._result_listeners):
                try:
                    listener(handle, response)
                except Exception:
                    logger.exception("result listener failed for job %s", job_id)
        elif handle is not None:
            logger.info("duplicate final response %s for job %s ignored", message.msg_id, job_id)

    def _note_stage(self, job_id: str, stage: str) -> None:
        with self._lock:
            self._stages[job_id] = stage

    def _write_stages_forever(self) -> None:
        """Write the noted progress stages every STAGE_WRITE_S, and once more when closing.

        A stage written after the job's result is ignored by the store: a finished job keeps its
        final status.
        """
        while True:
            stopping = self._stages_stop.wait(STAGE_WRITE_S)
            with self._lock:
                stages, self._stages = self._stages, {}
            if stages and self.store is not None:
                try:
                    self.store.update_job_statuses(stages)
                except Exception:  # the stages are progress only; the next ones follow
                    logger.exception("could not record the progress of %d jobs", len(stages))
            if stopping:
                return

    def _on_outputs_part(self, device_id: str, message: Message, part: OutputsPart) -> None:
        known = self.jobs.by_job(part.job_id) is not None or (
            self.store is not None and self.store.get_job(part.job_id) is not None
        )
        if not known:
            logger.debug("outputs part of job %s is for another host", part.job_id)
            return  # left unacknowledged, like a result: the host that sent the job stores it
        try:
            self.outputs.add(part)
        except (IntegrityError, OSError) as exc:
            logger.warning("outputs part %d of job %s refused: %s", part.index, part.job_id, exc)
            return
        self._ack(device_id, message.msg_id)

    def _ack(self, device_id: str, response_msg_id: str) -> None:
        payload = encode(AckCmd(msg_ids=[response_msg_id]), device_id=device_id)
        client = self._client
        if client is None:
            return  # closing: the agent re-sends it on our next connection
        info = client.publish(self.topics.cmd(device_id, "ack"), payload, qos=1)
        with self._lock:
            self._unconfirmed_acks = [i for i in self._unconfirmed_acks if not i.is_published()]
            self._unconfirmed_acks.append(info)
