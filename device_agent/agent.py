"""The device agent: MQTT lifecycle, command dispatch, and the one-job-at-a-time benchmark queue.

Threads: paho's network thread runs the callbacks (commands are validated, journaled and queued
there; artifact chunks are written to disk there, one at a time); the job thread runs benchmarks
one after another so they never disturb each other; the ticker thread publishes telemetry and
re-publishes unacknowledged results. The agent never imports numpy or a runtime: models are only
loaded by the benchmark worker process.

Test hook: the environment variable ``EDGETAILOR_AGENT_CRASH_AT=after_result_persisted`` makes the
agent ``os._exit(137)`` right after a final result is written to the outbox and before it is
published, to simulate a SIGKILL at that exact point. It exists for tests only. Deploys add the
points ``before_switch`` and ``after_switch_before_commit`` (see device_agent.deploy).

Deploy and rollback commands run on the same job thread as benchmarks (a health check must not
share the board with a benchmark), through device_agent.deploy; their final responses go through
the same outbox and journal.

The connection thread connects, runs paho's network loop until the connection ends, and tries
again with a growing delay, logging every attempt that fails with its reason and the next retry
(paho's own retry loop retries without saying why). A full disk never makes the agent deaf: a
command whose handling fails gets an error response, a result the outbox cannot store is sent
from memory, and a transfer that cannot fit fails with ``insufficient_storage`` before it starts.
With ``serve`` set, device_agent.serve runs the active model for local applications and follows
every deploy and rollback.

Trust (device_agent.trust): every command must be signed by the pinned host key, name this device,
be unexpired and carry a sequence number new to the replay window; the first validly signed command
pins its key when none is pinned (``--trust-key`` pins one explicitly). A refused command gets an
error response whose code says why (``unsigned``, ``bad_signature``, ``untrusted_key``, ``expired``,
``replayed``, ``misaddressed``), at most a bounded number per minute, and changes nothing: active
model, queue, outbox, journal and stored results stay as they were. Everything the agent sends is
signed with its own device key at the moment it is published.
"""

from __future__ import annotations

import logging
import os
import queue
import random
import shutil
import socket
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import paho.mqtt.client as mqtt

from device_agent import capabilities
from device_agent.backends import discover
from device_agent.bench.runner import WorkerLimits, run_worker
from device_agent.deploy import CRASH_HOOK_ENV, Deployer, Releases
from device_agent.errors import JobError
from device_agent.fetch import DEFAULT_WINDOW, ArtifactFetch
from device_agent.journal import DONE, PENDING, Journal, JournalEntry
from device_agent.lock import DataDirLock
from device_agent.outbox import Outbox, OutboxEntry
from device_agent.store import ArtifactStore, free_bytes, is_disk_full
from device_agent.systemd import notify, watchdog_interval_s
from device_agent.telemetry import TelemetrySampler
from device_agent.trust import Admission, HostTrust
from shared.broker_url import BrokerAddress, TlsOptions
from shared.errors import (
    EdgeTailorError,
    MessageTooLargeError,
    ReplayError,
    SignatureError,
    UnsupportedVersionError,
    ValidationError,
)
from shared.manifest import ArtifactManifest
from shared.messages import (
    OUTPUTS_LIMIT_BYTES,
    AckCmd,
    BenchmarkCmd,
    Body,
    CancelCmd,
    ChunkRequest,
    DeployCmd,
    ErrorInfo,
    Message,
    PingCmd,
    Response,
    RollbackCmd,
    RotateKeyCmd,
    decode,
    encode,
    new_msg_id,
    peek_ids,
)
from shared.mqtt import make_client
from shared.results import (
    BenchmarkResult,
    CancelResult,
    OutputsRef,
    PingResult,
    RotateKeyResult,
    TransferStats,
    from_data,
    split_outputs,
    to_data,
)
from shared.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics

if TYPE_CHECKING:
    from device_agent.serve.supervisor import InferenceServer, ServedModel

logger = logging.getLogger(__name__)

QOS = 1
RECONNECT_MIN_S = 1.0
RECONNECT_MAX_S = 30.0
# Results kept in memory when the outbox cannot write them; beyond this the oldest are dropped.
MAX_UNSAVED_RESULTS = 256
# Answers to refused commands (forged, replayed, malformed): a burst, then one per second at most.
REFUSAL_BURST = 20
REFUSALS_PER_S = 1.0


@dataclass
class AgentConfig:
    broker: BrokerAddress
    device_id: str
    data_dir: Path
    base_topic: str = "edgetailor"
    keepalive: int = 30
    telemetry_interval: float = 10.0
    threads: int | None = None
    trust_key: Path | None = None
    tls: TlsOptions = field(default_factory=TlsOptions)
    tags: dict[str, str] = field(default_factory=dict)
    cpu_affinity: tuple[int, ...] | None = None
    xfer_window: int = DEFAULT_WINDOW
    xfer_retry_s: float = 3.0
    xfer_timeout_s: float = 60.0
    outbox_retry_s: float = 15.0
    outbox_ttl_s: float = 7 * 24 * 3600.0
    outbox_max_entries: int = 2048
    outbox_max_mb: float = 64.0
    worker_memory_mb: int | None = None
    # Bounds memory and disk when commands arrive faster than jobs finish.
    max_queued_jobs: int = 32
    max_store_mb: float | None = None  # None: a quarter of the data dir's filesystem
    serve: str | None = None  # unix:PATH or HOST:PORT of the local inference endpoint


@dataclass
class Job:
    cmd_id: str
    cmd: BenchmarkCmd | DeployCmd | RollbackCmd
    cancelled: threading.Event = field(default_factory=threading.Event)
    # Artifacts this job has fetched: never evicted to make room for its next one.
    in_use: set[str] = field(default_factory=set)

    @property
    def job_id(self) -> str:
        if isinstance(self.cmd, BenchmarkCmd):
            return self.cmd.job_id
        if isinstance(self.cmd, DeployCmd):
            return self.cmd.deploy_id
        return self.cmd_id

    @property
    def name(self) -> str:
        """The command (and response topic) name: benchmark, deploy or rollback."""
        if isinstance(self.cmd, BenchmarkCmd):
            return "benchmark"
        return "deploy" if isinstance(self.cmd, DeployCmd) else "rollback"


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = config
        self.device_id = config.device_id
        self.topics = Topics(config.base_topic)
        # Absolute: the benchmark worker runs in its job folder, where a relative path means nothing.
        data_dir = Path(os.path.abspath(config.data_dir))
        self.data_dir = data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        self.lock = DataDirLock(data_dir).acquire()
        max_store = int(config.max_store_mb * 1024 * 1024) if config.max_store_mb else None
        self.store = ArtifactStore(data_dir, max_store)
        self.outbox = Outbox(
            data_dir / "outbox",
            ttl_s=config.outbox_ttl_s,
            max_entries=config.outbox_max_entries,
            max_bytes=int(config.outbox_max_mb * 1024 * 1024),
        )
        self.journal = Journal(data_dir / "journal")
        self.jobs_dir = data_dir / "jobs"
        self.backends = discover()
        self.birth = capabilities.birth(config.tags)
        self.sampler = TelemetrySampler()
        self.trust = HostTrust(data_dir, config.trust_key)
        self.signer = self.trust.signer
        self.refusals = _Budget(REFUSAL_BURST, REFUSALS_PER_S)
        self.releases = Releases(data_dir)
        self.deployer = Deployer(
            self.releases, self.device_id, self.trust.public_key, config.threads
        )
        self._unsaved: dict[str, OutboxEntry] = {}  # results the outbox could not write
        self._refused: str | None = None  # the reason of the last refused CONNACK
        self._connection: threading.Thread | None = None
        self.server: InferenceServer | None = None
        if config.serve:
            from device_agent.serve.address import parse_serve_address
            from device_agent.serve.supervisor import InferenceServer

            self.server = InferenceServer(
                parse_serve_address(config.serve),
                memory_bytes=self._worker_limits().memory_bytes,
                cpu_affinity=config.cpu_affinity,
            )
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._queued: dict[str, Job] = {}  # job_id -> job, queued or running
        self._current: Job | None = None
        self._fetches: dict[str, ArtifactFetch] = {}
        self._lock = threading.Lock()
        self._connected = threading.Event()
        self._stopping = threading.Event()
        self._started = time.monotonic()
        self.client = self._make_client()

    # -- MQTT lifecycle --------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        client = make_client(
            f"edgetailor-agent-{self.device_id}",
            self.config.broker,
            self.config.tls,
            will=(self.topics.status(self.device_id), STATUS_OFFLINE, QOS),
            # The connection thread retries, so that each failure is logged with its reason.
            reconnect_on_failure=False,
        )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        # The connection thread runs paho's loop; this hook makes publish() from any other thread
        # queue its packet for that loop (woken at once) instead of writing the socket itself,
        # so packets leave in the order they were published.
        client.on_socket_register_write = _queued_for_network_thread
        return client

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        if reason_code.is_failure:
            self._refused = str(reason_code)
            logger.error(
                "the broker %s refused the connection: %s", self.config.broker, reason_code
            )
            return
        self._refused = None
        logger.info("connected to %s as %s", self.config.broker, self.device_id)
        subscriptions = self.topics.device_subscriptions(self.device_id)
        with self._lock:
            fetches = list(self._fetches.items())
        subscriptions += [self.topics.artifact_chunks(sha) for sha, _ in fetches]
        client.subscribe([(topic, QOS) for topic in subscriptions])
        self._publish_birth()
        client.publish(self.topics.status(self.device_id), STATUS_ONLINE, qos=QOS, retain=True)
        self._connected.set()
        for _, fetch in fetches:
            fetch.on_reconnect()
        self._republish_outbox()

    def _publish_birth(self) -> None:
        birth = msgspec.structs.replace(
            self.birth, active_sha256=self.releases.active(), host_key_id=self.trust.key_id
        )
        self.client.publish(
            self.topics.birth(self.device_id),
            self._encode(birth),
            qos=QOS,
            retain=True,
        )

    def _encode(
        self, body: Body, *, corr_id: str | None = None, msg_id: str | None = None
    ) -> bytes:
        """An envelope from this device, signed with its key now (a fresh expiry on every copy)."""
        return encode(
            body, device_id=self.device_id, corr_id=corr_id, msg_id=msg_id, signer=self.signer
        )

    def _signed(self, payload: str) -> bytes:
        """The unsigned envelope an outbox entry keeps, signed for publishing now."""
        message = decode(payload.encode("utf-8"))
        return self._encode(message.body, corr_id=message.corr_id, msg_id=message.msg_id)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any
    ) -> None:
        was_connected = self._connected.is_set()
        self._connected.clear()
        if was_connected and not self._stopping.is_set():
            logger.warning("disconnected from the broker %s (%s)", self.config.broker, reason_code)

    def run(self, stop: threading.Event) -> None:
        """Connect and serve until ``stop`` is set; then say offline and disconnect."""
        self._recover()
        if self.server is not None:
            self.server.start(self._served_model())
        job_thread = threading.Thread(target=self._job_loop, name="jobs", daemon=True)
        ticker = threading.Thread(target=self._tick_loop, name="ticker", daemon=True)
        self._connection = threading.Thread(target=self._connection_loop, name="mqtt", daemon=True)
        job_thread.start()
        ticker.start()
        self._connection.start()
        notify("READY=1")
        try:
            stop.wait()
        finally:
            notify("STOPPING=1")
            self.shutdown()
            job_thread.join(timeout=15)
            self.lock.release()

    def _connection_loop(self) -> None:
        """Connect, serve the connection until it ends, wait, again; every failure says why."""
        broker = self.config.broker
        delay = RECONNECT_MIN_S
        attempt = 0
        while not self._stopping.is_set():
            attempt += 1
            logger.info("connecting to %s (attempt %d)", broker, attempt)
            self._refused = None
            try:
                self.client.connect(broker.host, broker.port, keepalive=self.config.keepalive)
            except (OSError, ValueError) as exc:
                reason = _describe_connect_error(exc)
                logger.warning(
                    "cannot reach the broker %s: %s; next attempt in %.0f s", broker, reason, delay
                )
            else:
                if self._stopping.is_set():
                    self.client.disconnect()
                    return
                connected_at = time.monotonic()
                try:
                    # Until the connection ends, or disconnect() has sent DISCONNECT at shutdown.
                    while self.client.loop(timeout=1.0) == mqtt.MQTT_ERR_SUCCESS:
                        pass
                except Exception:  # the loop must never end the agent's connection attempts
                    logger.exception("the MQTT network loop failed")
                if self._stopping.is_set():
                    return
                if self._refused is not None:
                    logger.warning(
                        "the broker %s refused the connection (%s); next attempt in %.0f s",
                        broker,
                        self._refused,
                        delay,
                    )
                else:
                    if time.monotonic() - connected_at > 2 * RECONNECT_MAX_S:
                        delay = RECONNECT_MIN_S  # a long-lived connection: reconnect quickly
                    logger.warning("connection to %s lost; next attempt in %.0f s", broker, delay)
            # Jitter spreads a fleet's reconnects after a broker restart.
            if self._stopping.wait(delay * random.uniform(0.8, 1.2)):
                return
            delay = min(delay * 2, RECONNECT_MAX_S)

    def shutdown(self) -> None:
        if self._stopping.is_set():
            return
        self._stopping.set()
        with self._lock:
            current = self._current
        if current is not None:
            current.cancelled.set()
        self._queue.put(None)
        if self.server is not None:
            self.server.stop()
        if self._connected.is_set():
            info = self.client.publish(
                self.topics.status(self.device_id), STATUS_OFFLINE, qos=QOS, retain=True
            )
            try:
                info.wait_for_publish(timeout=3)
            except (RuntimeError, ValueError) as exc:
                logger.warning("could not publish offline status: %s", exc)
        self.client.disconnect()
        if self._connection is not None:
            self._connection.join(timeout=10)
        logger.info("agent %s stopped", self.device_id)

    # -- recovery after a restart ----------------------------------------------------------------
    def _recover(self) -> None:
        """Reconcile journal and outbox, then queue again the jobs a restart interrupted."""
        recovered = self.releases.recover()
        if recovered is not None:
            journaled = self.journal.get(recovered.cmd_id)
            if journaled is not None and journaled.state == PENDING and journaled.command:
                try:
                    message = decode(journaled.command.encode("utf-8"))
                    if isinstance(message.body, DeployCmd | RollbackCmd):
                        self._publish_final(Job(message.msg_id, message.body), recovered.response)
                except (ValidationError, OSError) as exc:
                    logger.error("could not report the interrupted %s: %s", recovered.kind, exc)
        unacked = self.outbox.entries()
        for entry in unacked:
            if entry.corr_id:
                journaled = self.journal.get(entry.corr_id)
                if journaled is not None and journaled.state == PENDING:
                    self.journal.mark_done(entry.corr_id, entry.msg_id)
        self.journal.prune({e.msg_id for e in unacked})
        resumable: set[str] = set()
        for journaled in self.journal.entries():
            if journaled.state != PENDING or journaled.command is None:
                continue
            try:
                message = decode(journaled.command.encode("utf-8"))
            except ValidationError as exc:
                logger.error("journaled command %s unreadable, dropped: %s", journaled.cmd_id, exc)
                continue
            if isinstance(message.body, BenchmarkCmd | DeployCmd | RollbackCmd):
                job = Job(message.msg_id, message.body)
                resumable |= _artifacts_of(message.body)
                logger.info("re-queueing %s %s interrupted by a restart", job.name, job.job_id)
                self._enqueue(job)
        # A partial download no pending job will resume only takes space.
        self.store.discard_partials(resumable)

    # -- inbound ---------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
        except ValidationError:
            logger.debug("ignoring message on %s", msg.topic)
            return
        if parsed.kind == "art" and parsed.sha256:
            with self._lock:
                fetch = self._fetches.get(parsed.sha256)
            if fetch is not None:
                fetch.on_chunk(msg.payload)
            return
        if parsed.kind == "cmd" and parsed.device_id == self.device_id and parsed.name:
            try:
                self._handle_command(parsed.name, msg.payload)
            except Exception as exc:  # noqa: BLE001 -- answered: the agent keeps serving
                self._answer_failed_command(parsed.name, msg.payload, exc)

    def _answer_failed_command(self, name: str, payload: bytes, exc: Exception) -> None:
        """The command could not even be accepted (say, the journal cannot be written): say so."""
        if is_disk_full(exc):
            code = "insufficient_storage"
            message = (
                f"the device cannot record this command: {exc}; {self._free_text()}. Free space "
                "on the board; the agent goes on answering meanwhile"
            )
            logger.error("command on cmd/%s refused, the disk is full: %s", name, exc)
        else:
            code = "internal_error"
            message = f"the device failed to handle this command: {type(exc).__name__}: {exc}"
            logger.exception("command on cmd/%s failed unexpectedly", name)
        _, corr_id = peek_ids(payload)
        body: Body | None = None
        try:
            body = decode(payload).body
        except ValidationError:
            pass
        data: dict[str, Any] | None = None
        if isinstance(body, DeployCmd | RollbackCmd):
            data = self.deployer.failed(body, code, message).data
        elif isinstance(body, BenchmarkCmd):
            data = {"job_id": body.job_id}
        try:
            self._respond(
                name,
                corr_id,
                Response(
                    status="error", data=data, error=ErrorInfo(code=code, message=message[:4000])
                ),
            )
        except Exception:
            logger.exception("could not even answer the failed command on cmd/%s", name)

    def _free_text(self) -> str:
        try:
            return f"{free_bytes(self.data_dir):,} bytes free on {self.data_dir}"
        except OSError:
            return f"free space on {self.data_dir} unknown"

    def _handle_command(self, name: str, payload: bytes) -> None:
        try:
            message = decode(payload)
            if message.schema != f"cmd.{name}":
                raise ValidationError(
                    f"message of schema {message.schema!r} sent on command topic {name!r}; "
                    f"commands on cmd/{name} must have schema 'cmd.{name}'"
                )
        except ValidationError as exc:
            self._answer_bad_message(payload, exc)
            return
        pinned = self.trust.key_id
        try:
            admission = self.trust.admit(message, self.device_id)
        except SignatureError as exc:
            self._refuse(name, message, exc)
            return
        if pinned is None and self._connected.is_set():
            self._publish_birth()  # pinned on first use: the birth names the key from now on
        body = message.body
        if admission is Admission.SEEN:
            # The same envelope again (a broker redelivery): a duplicate of a command the journal
            # knows, else a replay of one that never ran here.
            seen = self.journal.get(message.msg_id)
            if seen is not None and isinstance(body, BenchmarkCmd | DeployCmd | RollbackCmd):
                self._answer_duplicate(name, message.msg_id, seen)
            else:
                self._refuse(
                    name,
                    message,
                    ReplayError(f"{message.schema} {message.msg_id}: sequence number seen before"),
                )
            return
        self.trust.accept(message)
        if isinstance(body, AckCmd):
            for msg_id in body.msg_ids:
                if self._unsaved.pop(msg_id, None) is not None or self.outbox.remove(msg_id):
                    logger.info("response %s acknowledged by the host", msg_id)
            for msg_id in body.unknown:
                if self._unsaved.pop(msg_id, None) is not None or self.outbox.remove(msg_id):
                    logger.warning(
                        "response %s dropped: the host has no record of its command", msg_id
                    )
            return
        if isinstance(body, PingCmd):
            self._respond(name, message.msg_id, Response(status="ok", data=self._ping_data()))
            return
        if isinstance(body, CancelCmd):
            found = self._cancel(body.job_id)
            result = CancelResult(job_id=body.job_id, cancelled=found)
            self._respond(name, message.msg_id, Response(status="ok", data=to_data(result)))
            return
        if isinstance(body, RotateKeyCmd):
            self._rotate(name, message, body)
            return
        if isinstance(body, BenchmarkCmd | DeployCmd | RollbackCmd):
            self._accept_benchmark(name, message, body, payload)
            return
        self._respond(
            name,
            message.msg_id,
            Response(
                status="error",
                error=ErrorInfo(
                    code="unsupported_command",
                    message=f"this agent does not handle {message.schema}",
                ),
            ),
        )

    def _rotate(self, name: str, message: Message, body: RotateKeyCmd) -> None:
        """Pin the key the currently pinned key vouches for; the birth then reports it."""
        previous = self.trust.key_id
        try:
            pin = self.trust.rotate(body.key)
        except (ValidationError, SignatureError) as exc:
            code = exc.code if isinstance(exc, SignatureError) else "bad_message"
            self._respond(
                name,
                message.msg_id,
                Response(status="error", error=ErrorInfo(code=code, message=str(exc)[:4000])),
            )
            return
        result = RotateKeyResult(key_id=pin.key_id, previous_key_id=previous)
        self._respond(name, message.msg_id, Response(status="ok", data=to_data(result)))
        if self._connected.is_set():
            self._publish_birth()

    def _refuse(self, name: str, message: Message, exc: SignatureError) -> None:
        """Answer a command that failed its signature, address, expiry or sequence check.

        Nothing is recorded: the answer goes straight out (never to the outbox), and only while
        the refusal budget lasts, so a flood of forged commands makes a bounded number of answers.
        """
        if not self.refusals.take():
            logger.debug("refused %s %s (%s), unanswered: over budget", message.schema,
                         message.msg_id, exc.code)  # fmt: skip
            return
        logger.warning("refused %s %s (%s): %s", message.schema, message.msg_id, exc.code, exc)
        self._respond(
            name,
            message.msg_id,
            Response(status="error", error=ErrorInfo(code=exc.code, message=str(exc)[:4000])),
        )

    def _answer_bad_message(self, payload: bytes, exc: ValidationError) -> None:
        if isinstance(exc, MessageTooLargeError):
            code = "too_large"
        elif isinstance(exc, UnsupportedVersionError):
            code = "unsupported_version"
        else:
            code = "bad_message"
        _, corr_id = peek_ids(payload)
        if not self.refusals.take():
            logger.debug("rejected a command (%s), unanswered: over budget", code)
            return
        logger.warning("rejected a command (%s): %s", code, exc)
        self._respond(
            "error",
            corr_id,
            Response(status="error", error=ErrorInfo(code=code, message=str(exc)[:4000])),
        )

    def _accept_benchmark(
        self,
        name: str,
        message: Message,
        body: BenchmarkCmd | DeployCmd | RollbackCmd,
        payload: bytes,
    ) -> None:
        seen = self.journal.get(message.msg_id)
        if seen is not None:
            self._answer_duplicate(name, message.msg_id, seen)
            return
        with self._lock:
            queued = len(self._queued)
        if queued >= self.config.max_queued_jobs:
            # Not journaled: the host may send the same command again later and it will run.
            logger.warning("refused %s %s: %d jobs already queued", name, message.msg_id, queued)
            self._respond(
                name,
                message.msg_id,
                Response(
                    status="error",
                    error=ErrorInfo(
                        code="busy",
                        message=f"{queued} jobs are already queued on this device; retry later",
                    ),
                ),
            )
            return
        job = Job(message.msg_id, body)
        self.journal.put(
            JournalEntry(
                cmd_id=message.msg_id,
                schema=message.schema,
                state=PENDING,
                job_id=job.job_id,
                command=payload.decode("utf-8"),
            )
        )
        self._enqueue(job)

    def _answer_duplicate(self, name: str, cmd_id: str, seen: JournalEntry) -> None:
        unsaved = next((e for e in self._unsaved.values() if e.corr_id == cmd_id), None)
        if unsaved is not None:  # done, but neither outbox nor journal could record it
            logger.info("command %s was done; re-publishing its result kept in memory", cmd_id)
            self.client.publish(unsaved.topic, self._signed(unsaved.payload), qos=QOS)
            return
        if seen.state != DONE:
            logger.info("command %s is already queued or running; duplicate ignored", cmd_id)
            return
        pending = self.outbox.get(seen.response_msg_id) if seen.response_msg_id else None
        if pending is not None:
            logger.info("command %s was done; re-publishing its unacknowledged result", cmd_id)
            self.client.publish(pending.topic, self._signed(pending.payload), qos=QOS)
            return
        self._respond(
            name, cmd_id, Response(status="ok", data={"duplicate": True, "job_id": seen.job_id})
        )

    def _enqueue(self, job: Job) -> None:
        with self._lock:
            self._queued[job.job_id] = job
        self._respond(
            job.name,
            job.cmd_id,
            Response(status="progress", data={"stage": "accepted", "job_id": job.job_id}),
        )
        self._queue.put(job)

    def _cancel(self, job_id: str) -> bool:
        with self._lock:
            job = self._queued.get(job_id)
        if job is None:
            return False
        job.cancelled.set()
        return True

    def _ping_data(self) -> dict[str, Any]:
        with self._lock:
            current = self._current.job_id if self._current else None
            queued = len(self._queued)
        result = PingResult(
            agent_version=self.birth.agent_version,
            uptime_s=round(time.monotonic() - self._started, 1),
            running=current,
            queued=queued,
        )
        return to_data(result)

    # -- outbound --------------------------------------------------------------------------------
    def _respond(self, name: str, corr_id: str | None, response: Response) -> str:
        msg_id = new_msg_id()
        payload = self._encode(response, corr_id=corr_id, msg_id=msg_id)
        self.client.publish(self.topics.resp(self.device_id, name), payload, qos=QOS)
        return msg_id

    def _publish_final(self, job: Job, response: Response) -> None:
        """Outbox first (atomic + fsync), journal second, broker last: a crash loses nothing.

        When the outbox cannot be written (a full disk), the result is kept in memory and sent,
        and re-sent like the outbox until acknowledged: only a restart before then loses it.
        """
        msg_id = new_msg_id()
        topic = self.topics.resp(self.device_id, job.name)
        payload = encode(response, device_id=self.device_id, corr_id=job.cmd_id, msg_id=msg_id)
        try:
            self.outbox.put(msg_id, topic, payload, corr_id=job.cmd_id, job_id=job.job_id)
        except OSError as exc:
            logger.error(
                "cannot write the result of %s %s to the outbox (%s); sending it from memory",
                job.name,
                job.job_id,
                exc,
            )
            entry = OutboxEntry(
                msg_id, topic, payload.decode("utf-8"), job.cmd_id, job.job_id, time.time()
            )
            self._unsaved[msg_id] = entry
            while len(self._unsaved) > MAX_UNSAVED_RESULTS:
                self._unsaved.pop(next(iter(self._unsaved)))
        else:
            if os.environ.get(CRASH_HOOK_ENV) == "after_result_persisted":
                logger.warning(
                    "test hook %s: exiting right after persisting %s", CRASH_HOOK_ENV, msg_id
                )
                os._exit(137)
        try:
            self.journal.mark_done(job.cmd_id, msg_id)
        except OSError as exc:
            logger.error("cannot mark command %s done in the journal: %s", job.cmd_id, exc)
        self.client.publish(
            topic, self._encode(response, corr_id=job.cmd_id, msg_id=msg_id), qos=QOS
        )

    def _republish_outbox(self) -> None:
        try:
            self.outbox.prune()
        except OSError as exc:
            logger.warning("could not prune the outbox: %s", exc)
        for entry in [*self.outbox.entries(), *list(self._unsaved.values())]:
            try:
                payload = self._signed(entry.payload)
            except ValidationError as exc:
                logger.error("outbox entry %s unreadable, dropped: %s", entry.msg_id, exc)
                self.outbox.remove(entry.msg_id)
                continue
            self.client.publish(entry.topic, payload, qos=QOS)

    def _send_chunk_request(self, request: ChunkRequest) -> None:
        if not self._connected.is_set():
            return  # asked again after the reconnect; queuing it in paho would only duplicate
        self.client.publish(
            self.topics.xfer_request(self.device_id), self._encode(request), qos=QOS
        )

    def _tick_loop(self) -> None:
        next_telemetry = time.monotonic()
        next_outbox = time.monotonic() + self.config.outbox_retry_s
        watchdog = watchdog_interval_s()
        next_watchdog = time.monotonic()
        while not self._stopping.wait(0.25):
            now = time.monotonic()
            if watchdog is not None and now >= next_watchdog:
                next_watchdog = now + watchdog
                connection = self._connection
                if connection is None or connection.is_alive():
                    notify("WATCHDOG=1")  # withheld when the connection thread died: restart us
            if not self._connected.is_set():
                continue
            if now >= next_telemetry:
                next_telemetry = now + self.config.telemetry_interval
                try:
                    body: Body = self._telemetry()
                    self.client.publish(
                        self.topics.telemetry(self.device_id), self._encode(body), qos=QOS
                    )
                except (OSError, EdgeTailorError) as exc:
                    logger.warning("telemetry failed: %s", exc)
            if now >= next_outbox:
                next_outbox = now + self.config.outbox_retry_s
                self._republish_outbox()

    def _telemetry(self) -> Body:
        sample = self.sampler.sample(active_sha256=self.releases.active())
        try:
            disk_free_mb: float | None = round(free_bytes(self.data_dir) / (1024 * 1024), 1)
        except OSError:
            disk_free_mb = None
        serving = self.server.stats() if self.server is not None else None
        return msgspec.structs.replace(sample, disk_free_mb=disk_free_mb, serving=serving)

    def _served_model(self) -> ServedModel | None:
        """The active release as the inference endpoint should serve it, or None."""
        from device_agent.serve.supervisor import ServedModel

        sha = self.releases.active()
        path = self.releases.model_path(sha) if sha else None
        if sha is None or path is None:
            return None
        runtime, threads = self.releases.serving_options(sha)
        return ServedModel(
            sha256=sha,
            path=str(path),
            format=path.suffix.lstrip("."),
            threads=threads or self.config.threads,
            runtime=runtime,
        )

    # -- jobs ------------------------------------------------------------------------------------
    def _job_loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None or self._stopping.is_set():
                return
            with self._lock:
                self._current = job
            try:
                if isinstance(job.cmd, BenchmarkCmd):
                    response = self._run_job(job)
                else:
                    response = self._run_deploy(job)
            except _Interrupted:
                logger.info(
                    "job %s interrupted by shutdown; it runs again after restart", job.job_id
                )
                return
            finally:
                with self._lock:
                    self._current = None
                    self._queued.pop(job.job_id, None)
            try:
                self._publish_final(job, response)
            except (OSError, EdgeTailorError):
                logger.exception("could not persist the result of job %s", job.job_id)
            if not isinstance(job.cmd, BenchmarkCmd):
                if self.server is not None:
                    self.server.load(self._served_model())
                if self._connected.is_set():
                    self._publish_birth()  # the retained birth carries the active model

    def _run_deploy(self, job: Job) -> Response:
        """cmd.deploy / cmd.rollback through device_agent.deploy, reusing fetch and worker."""
        cmd = job.cmd
        if isinstance(cmd, BenchmarkCmd):
            raise TypeError("benchmarks run through _run_job")
        work_dir = self.jobs_dir / job.cmd_id

        def obtain(manifest: ArtifactManifest, chunk_size: int) -> Path:
            path, _stats = self._obtain(
                manifest, chunk_size, job, runnable=manifest.format != "npz"
            )
            return path

        def run_health(worker_job: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            return run_worker(
                worker_job,
                work_dir,
                timeout_s=timeout_s,
                limits=self._worker_limits(),
                cancelled=job.cancelled,
            )

        try:
            if job.cancelled.is_set():
                raise JobError("cancelled", "the deploy was cancelled before it started")
            if isinstance(cmd, RollbackCmd):
                return self.deployer.rollback(job.cmd_id, cmd)
            return self.deployer.deploy(
                job.cmd_id,
                cmd,
                obtain=obtain,
                run_health=run_health,
                progress=lambda stage: self._progress(job, stage),
            )
        except JobError as exc:
            if exc.code == "cancelled" and self._stopping.is_set():
                raise _Interrupted from exc
            return self.deployer.failed(cmd, exc.code, exc.message)
        except EdgeTailorError as exc:
            logger.warning("%s %s failed: %s", job.name, job.job_id, exc)
            return self.deployer.failed(cmd, "deploy_failed", str(exc))
        except OSError as exc:
            if not is_disk_full(exc):
                logger.exception("%s %s failed unexpectedly", job.name, job.job_id)
                return self.deployer.failed(cmd, "internal_error", f"{type(exc).__name__}: {exc}")
            logger.error("%s %s failed, the disk is full: %s", job.name, job.job_id, exc)
            return self.deployer.failed(cmd, "insufficient_storage", self._disk_full_text(exc))
        except Exception as exc:
            logger.exception("%s %s failed unexpectedly", job.name, job.job_id)
            return self.deployer.failed(cmd, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _run_job(self, job: Job) -> Response:
        cmd = job.cmd
        work_dir = self.jobs_dir / job.cmd_id
        try:
            if job.cancelled.is_set():
                raise JobError("cancelled", "the job was cancelled before it started")
            self._progress(job, "fetching")
            model_path, model_stats = self._obtain(cmd.model, cmd.chunk_size, job, runnable=True)
            transfers = [model_stats]
            eval_path = None
            if cmd.eval_data is not None:
                eval_path, eval_stats = self._obtain(
                    cmd.eval_data, cmd.chunk_size, job, runnable=False
                )
                transfers.append(eval_stats)
            self._progress(job, "running")
            worker_job = {
                "job_id": cmd.job_id,
                "model_path": str(model_path),
                "model_format": cmd.model.format,
                "model_sha256": cmd.model.sha256,
                "eval_path": str(eval_path) if eval_path else None,
                "eval_limit": cmd.eval_limit,
                "task": cmd.task,
                "threads": cmd.threads or self.config.threads,
                "warmup_runs": cmd.warmup_runs,
                "warmup_s": cmd.warmup_s,
                "runs": cmd.runs,
                "min_s": cmd.min_s,
            }
            outputs_path = work_dir / "outputs.npz"
            if cmd.return_outputs:
                worker_job["outputs_path"] = str(outputs_path)
                # Room for the npz headers around the arrays.
                worker_job["max_outputs_bytes"] = OUTPUTS_LIMIT_BYTES - 64 * 1024
            raw = run_worker(
                worker_job,
                work_dir,
                timeout_s=cmd.timeout_s,
                limits=self._worker_limits(),
                cancelled=job.cancelled,
            )
            raw["transfers"] = [to_data(t) for t in transfers]
            if cmd.return_outputs:
                raw["outputs"] = to_data(self._send_outputs(job, outputs_path))
            result = from_data(raw, BenchmarkResult)
            logger.info("job %s done: p50 %.3f ms", cmd.job_id, result.latency_ms.p50)
            return Response(status="ok", data=to_data(result))
        except JobError as exc:
            if exc.code == "cancelled" and self._stopping.is_set():
                raise _Interrupted from exc
            logger.warning("job %s failed (%s): %s", cmd.job_id, exc.code, exc.message)
            return _error(cmd.job_id, exc.code, exc.message)
        except EdgeTailorError as exc:
            logger.warning("job %s failed: %s", cmd.job_id, exc)
            return _error(cmd.job_id, "job_failed", str(exc))
        except OSError as exc:
            if not is_disk_full(exc):
                logger.exception("job %s failed unexpectedly", cmd.job_id)
                return _error(cmd.job_id, "internal_error", f"{type(exc).__name__}: {exc}")
            logger.error("job %s failed, the disk is full: %s", cmd.job_id, exc)
            return _error(cmd.job_id, "insufficient_storage", self._disk_full_text(exc))
        except Exception as exc:
            logger.exception("job %s failed unexpectedly", cmd.job_id)
            return _error(cmd.job_id, "internal_error", f"{type(exc).__name__}: {exc}")
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)

    def _send_outputs(self, job: Job, path: Path) -> OutputsRef:
        """The raw eval outputs go out in parts, through the outbox, before the result naming them."""
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise JobError("outputs_missing", f"the worker wrote no eval outputs: {exc}") from exc
        try:
            ref, parts = split_outputs(job.job_id, data)
        except ValidationError as exc:
            raise JobError("outputs_too_large", str(exc)) from exc
        topic = self.topics.resp(self.device_id, job.name)
        for part in parts:
            msg_id = new_msg_id()
            payload = encode(part, device_id=self.device_id, msg_id=msg_id)
            # No corr_id: only the final response of a command marks it done after a restart.
            self.outbox.put(msg_id, topic, payload, corr_id=None, job_id=job.job_id)
            self.client.publish(topic, self._encode(part, msg_id=msg_id), qos=QOS)
        return ref

    def _disk_full_text(self, exc: OSError) -> str:
        return f"the disk is full ({exc}); {self._free_text()}. Free space on the board and retry"

    def _progress(self, job: Job, stage: str) -> None:
        self._respond(
            job.name,
            job.cmd_id,
            Response(status="progress", data={"stage": stage, "job_id": job.job_id}),
        )

    def _worker_limits(self) -> WorkerLimits:
        memory = self.config.worker_memory_mb
        if memory is None:
            # Address space, not resident memory: runtimes reserve more than they touch, so the
            # default is the board's RAM (at least 2 GiB) - a worker cannot use more than that anyway.
            import psutil

            memory = max(2048, int(psutil.virtual_memory().total / (1024 * 1024)))
        return WorkerLimits(
            memory_bytes=memory * 1024 * 1024,
            cpu_affinity=self.config.cpu_affinity,
        )

    def _obtain(
        self, manifest: ArtifactManifest, chunk_size: int, job: Job, *, runnable: bool
    ) -> tuple[Path, TransferStats]:
        """The verified local path of an artifact: from the store, or fetched chunk by chunk."""
        if runnable and manifest.format not in self.backends:
            raise JobError(
                "unsupported_format",
                f"this device has no runtime for {manifest.format!r} artifacts; it runs: "
                f"{', '.join(sorted(self.backends)) or 'none'}",
            )
        trusted = self.trust.public_key()
        if trusted is not None:
            from shared.signing import verify_manifest

            try:
                verify_manifest(manifest, trusted, device_id=self.device_id)
            except SignatureError as exc:
                raise JobError("untrusted_manifest", f"{exc}; refused before download") from exc
        sha, fmt = manifest.sha256, manifest.format
        job.in_use.add(sha)
        if self.store.has(sha, fmt, manifest.size_bytes):
            return self.store.path_of(sha, fmt), TransferStats(sha256=sha, already_stored=True)
        # Checked before the first chunk is asked for: a transfer that cannot fit never starts.
        keep = {s for s in (self.releases.active(), self.releases.previous()) if s} | job.in_use
        self.store.make_room(sha, fmt, manifest.size_bytes, keep=keep)
        partial = self.store.open_partial(sha, fmt, manifest.size_bytes, chunk_size)
        fetch = ArtifactFetch(
            sha,
            partial,
            self._send_chunk_request,
            window=self.config.xfer_window,
            retry_s=self.config.xfer_retry_s,
            timeout_s=self.config.xfer_timeout_s,
            cancelled=job.cancelled,
        )
        topic = self.topics.artifact_chunks(sha)
        with self._lock:
            self._fetches[sha] = fetch
        self.client.subscribe(topic, qos=QOS)
        try:
            stats = fetch.run()
        except BaseException:
            fetch.close()
            if not self._stopping.is_set():
                # Failed, not interrupted by a shutdown (which resumes after the restart): the
                # preallocated file would only keep the disk full.
                partial.discard()
            raise
        finally:
            with self._lock:
                self._fetches.pop(sha, None)
            self.client.unsubscribe(topic)
        return self.store.commit(partial, sha, fmt), stats


def _queued_for_network_thread(client: mqtt.Client, userdata: Any, sock: Any) -> None:
    """See Agent._make_client."""


def _describe_connect_error(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | socket.timeout):
        return "no answer (timed out); check the address, the port and any firewall"
    if isinstance(exc, ConnectionRefusedError):
        return f"{exc.strerror or exc} (nothing listens on that port)"
    if isinstance(exc, socket.gaierror):
        return f"cannot resolve the host name ({exc})"
    return f"{type(exc).__name__}: {exc}"


def _artifacts_of(cmd: BenchmarkCmd | DeployCmd | RollbackCmd) -> set[str]:
    if isinstance(cmd, RollbackCmd):
        return set()
    return {cmd.model.sha256} | ({cmd.eval_data.sha256} if cmd.eval_data else set())


class _Budget:
    """A token bucket: ``burst`` at once, then ``per_s`` a second (thread-safe)."""

    def __init__(self, burst: int, per_s: float) -> None:
        self.burst = burst
        self.per_s = per_s
        self._tokens = float(burst)
        self._at = time.monotonic()
        self._lock = threading.Lock()

    def left(self) -> bool:
        """Whether :meth:`take` would succeed now (without taking)."""
        with self._lock:
            now = time.monotonic()
            return min(self.burst, self._tokens + (now - self._at) * self.per_s) >= 1

    def take(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.per_s)
            self._at = now
            if self._tokens < 1:
                return False
            self._tokens -= 1
            return True


class _Interrupted(Exception):
    """The agent is shutting down in the middle of a job; the job stays journaled as pending."""


def _error(job_id: str, code: str, message: str) -> Response:
    return Response(
        status="error", data={"job_id": job_id}, error=ErrorInfo(code=code, message=message[:4000])
    )
