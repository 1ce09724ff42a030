"""Simulated boards that speak the real protocol, many per process, for fleet-scale tests and benches.

Each board has its own MQTT connection (its own Last Will: ``offline`` on its status topic), its
retained birth and ``online`` status, and answers commands with the real ``shared`` code: envelopes
(shared.messages), topics (shared.topics), chunk requests and chunk frames (shared.transfer, each
payload hash checked, the whole artifact checked against its manifest's sha256), the agent's
``accepted``/``fetching``/``running`` progress, and a final result kept in an in-memory outbox and
sent again every ``outbox_retry_s`` until the host acknowledges it with ``cmd.ack``, as
device_agent.agent does with its outbox on disk. Like the agent, each board checks every command
(shared.signing: signed by the host key it pinned on first use, addressed to it, unexpired, a
sequence number new to its replay window), refuses the others with their code, and signs
everything it sends with a device key of its own, at the moment it sends it: that cost is part of
the fleet bench. Nothing runs a model: the benchmark numbers are synthesized (a latency that grows
with the model's size, jittered per board; a metric near 0.9) and say so (``backend``
``simulated``); a deploy fetches its artifact and commits, a rollback restores.

One thread drives every connection: paho clients without their own network threads, their sockets
in one ``selectors`` loop (``on_socket_register_write`` tells when one has bytes to send), so a
thousand boards cost a thousand sockets, not a thousand threads.
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import logging
import os
import random
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Self

import paho.mqtt.client as mqtt

from shared.broker_url import parse_broker_url
from shared.errors import SignatureError, ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import (
    AckCmd,
    BenchmarkCmd,
    Birth,
    Body,
    ChunkRequest,
    DeployCmd,
    ErrorInfo,
    Message,
    PingCmd,
    Response,
    RollbackCmd,
    RuntimeInfo,
    decode,
    encode,
    new_msg_id,
)
from shared.results import BenchmarkResult, DeployResult, LatencyStats, TransferStats, to_data
from shared.signing import ReplayWindow, Signer, key_id_of, verify_message
from shared.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics
from shared.transfer import chunk_count, decode_chunk

logger = logging.getLogger(__name__)

QOS = 1
MAX_INDICES = 256  # a ChunkRequest names at most this many chunks


@dataclass
class _Fetch:
    manifest: ArtifactManifest
    chunk_size: int
    total: int
    chunks: dict[int, bytes] = field(default_factory=dict)
    subscribed: bool = False
    requests: int = 0
    started: float = field(default_factory=time.monotonic)
    last_chunk: float = field(default_factory=time.monotonic)
    rejected: int = 0
    duplicates: int = 0


@dataclass
class _Job:
    cmd_id: str
    cmd: BenchmarkCmd | DeployCmd
    fetches: list[_Fetch]
    transfers: list[TransferStats] = field(default_factory=list)


@dataclass
class SimStats:
    commands: int = 0
    results_sent: int = 0
    results_resent: int = 0
    acks: int = 0
    refused: int = 0
    chunks_received: int = 0
    chunks_rejected: int = 0
    hash_failures: int = 0


class SimBoard:
    """One simulated board: a paho client driven by :class:`SimFleet`'s loop, never by itself."""

    def __init__(self, fleet: SimFleet, device_id: str, index: int) -> None:
        self.fleet = fleet
        self.device_id = device_id
        self.index = index
        self.topics = fleet.topics
        self.rng = random.Random(f"{fleet.seed}-{device_id}")
        self.speed = self.rng.uniform(0.6, 1.6)  # this board's latency factor
        self.journal: dict[str, str | None] = {}  # cmd msg_id -> final response msg_id
        # msg_id -> (topic, body, corr_id): signed again each time it is published
        self.outbox: dict[str, tuple[str, Body, str | None]] = {}
        self.signer = Signer.generate()  # this board's device key
        self.pinned: str | None = None  # the host key, pinned on the first valid command
        self.window = ReplayWindow()
        self.jobs: dict[str, _Job] = {}
        self.fetches: dict[str, _Fetch] = {}  # sha256 -> the transfer in progress
        self._sub_mids: dict[int, str] = {}
        self.connected = False
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"{fleet.client_prefix}-{device_id}"[:64],
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        address = fleet.address
        if address.username:
            self.client.username_pw_set(address.username, address.password)
        self.client.will_set(self.topics.status(device_id), STATUS_OFFLINE, qos=QOS, retain=True)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.client.on_subscribe = self._on_subscribe
        self.client.on_socket_open = fleet._socket_open
        self.client.on_socket_close = fleet._socket_close
        self.client.on_socket_register_write = fleet._register_write
        self.client.on_socket_unregister_write = fleet._unregister_write
        self.client.user_data_set(self)

    # -- connection ------------------------------------------------------------------------------
    def connect(self) -> None:
        address = self.fleet.address
        self.client.connect(address.host, address.port, keepalive=self.fleet.keepalive)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if reason.is_failure:
            logger.error("board %s refused by the broker: %s", self.device_id, reason)
            return
        self.connected = True
        for topic in self.topics.device_subscriptions(self.device_id):
            client.subscribe(topic, qos=QOS)
        for fetch in self.fetches.values():
            fetch.subscribed = False
            self._subscribe_artifact(fetch)
        client.publish(self.topics.birth(self.device_id), self._birth(), qos=QOS, retain=True)
        client.publish(self.topics.status(self.device_id), STATUS_ONLINE, qos=QOS, retain=True)
        self._republish_outbox()
        self.fleet._board_online(self)

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, _reason: Any, _p: Any) -> None:
        self.connected = False

    def _birth(self) -> bytes:
        body = Birth(
            agent_version="simfleet",
            arch="aarch64",
            cpu_model="simulated Cortex-A76",
            cores=4,
            ram_mb=4096.0,
            os="simulated",
            python="3.11",
            runtimes=[RuntimeInfo("tflite", "simulated", "0", ["tflite", "onnx"])],
            tags={"simulated": "true"},
            host_key_id=key_id_of(self.pinned) if self.pinned else None,
        )
        return self._encode(body)

    def _encode(
        self, body: Body, *, corr_id: str | None = None, msg_id: str | None = None
    ) -> bytes:
        return encode(
            body, device_id=self.device_id, corr_id=corr_id, msg_id=msg_id, signer=self.signer
        )

    # -- incoming --------------------------------------------------------------------------------
    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            parsed = self.topics.parse(msg.topic)
            if parsed.kind == "art" and parsed.sha256:
                self._on_chunk(parsed.sha256, msg.payload)
            elif parsed.kind == "cmd" and parsed.device_id == self.device_id and parsed.name:
                self._on_command(parsed.name, msg.payload)
        except ValidationError as exc:
            logger.warning("board %s ignored a message on %s: %s", self.device_id, msg.topic, exc)
        except Exception:  # the loop serves every board: one bad message must not stop it
            logger.exception("board %s failed on a message on %s", self.device_id, msg.topic)

    def _admit(self, name: str, message: Message) -> bool:
        """The agent's checks (device_agent.trust): signature by the pinned key (pinning the
        first valid one), address, expiry, a sequence number new to the window."""
        try:
            key = verify_message(
                message,
                trusted={self.pinned} if self.pinned else None,
                device_id=self.device_id,
            )
            seq = message.auth.seq if message.auth is not None else None
            if seq is None or not self.window.is_new(seq):
                if seq is not None and message.msg_id in self.journal:
                    return True  # the same envelope again: a duplicate, answered as one
                raise SignatureError(f"{message.msg_id}: no new sequence number")
        except SignatureError as exc:
            self.fleet.stats.refused += 1
            error = ErrorInfo(code=exc.code, message=str(exc)[:4000])
            self._respond(name, message.msg_id, Response(status="error", error=error))
            return False
        self.window.accept(seq)
        if self.pinned is None:
            self.pinned = key
        return True

    def _on_command(self, name: str, payload: bytes) -> None:
        message = decode(payload)
        if not self._admit(name, message):
            return
        body = message.body
        if isinstance(body, AckCmd):
            for msg_id in [*body.msg_ids, *body.unknown]:
                if self.outbox.pop(msg_id, None) is not None:
                    self.fleet.stats.acks += 1
            return
        if isinstance(body, PingCmd):
            self._respond(name, message.msg_id, Response(status="ok", data={"simulated": True}))
            return
        if isinstance(body, RollbackCmd):
            result = DeployResult(
                deploy_id=body.deploy_id, outcome="restored", active_sha256=None,
                previous_sha256=None, detail="simulated",
            )  # fmt: skip
            self._finish(name, message.msg_id, Response(status="ok", data=to_data(result)))
            return
        if not isinstance(body, BenchmarkCmd | DeployCmd):
            error = ErrorInfo(code="unsupported_command", message=f"simulated: {message.schema}")
            self._respond(name, message.msg_id, Response(status="error", error=error))
            return
        if message.msg_id in self.journal:  # a command sent again: its result again, if done
            done = self.journal[message.msg_id]
            if done is not None and done in self.outbox:
                self._publish_outbox_entry(done)
            return
        self.fleet.stats.commands += 1
        self.journal[message.msg_id] = None
        job_id = body.job_id if isinstance(body, BenchmarkCmd) else body.deploy_id
        accepted = {"stage": "accepted", "job_id": job_id}
        self._respond(name, message.msg_id, Response(status="progress", data=accepted))
        self._respond(
            name,
            message.msg_id,
            Response(status="progress", data={"stage": "fetching", "job_id": job_id}),
        )
        manifests = [body.model] + ([body.eval_data] if body.eval_data is not None else [])
        fetches = [self._start_fetch(m, body.chunk_size) for m in manifests]
        job = _Job(message.msg_id, body, fetches)
        self.jobs[message.msg_id] = job
        self._maybe_run(job)

    # -- artifact transfer -----------------------------------------------------------------------
    def _start_fetch(self, manifest: ArtifactManifest, chunk_size: int) -> _Fetch:
        fetch = self.fetches.get(manifest.sha256)
        if fetch is None:
            total = chunk_count(manifest.size_bytes, chunk_size)
            fetch = _Fetch(manifest, chunk_size, total)
            self.fetches[manifest.sha256] = fetch
            self._subscribe_artifact(fetch)
        return fetch

    def _subscribe_artifact(self, fetch: _Fetch) -> None:
        _rc, mid = self.client.subscribe(self.topics.artifact_chunks(fetch.manifest.sha256), QOS)
        self._sub_mids[mid] = fetch.manifest.sha256

    def _on_subscribe(self, _c: mqtt.Client, _u: Any, mid: int, _codes: Any, _p: Any) -> None:
        sha = self._sub_mids.pop(mid, None)
        fetch = self.fetches.get(sha) if sha else None
        if fetch is not None:
            fetch.subscribed = True
            if self.fleet.fetch_delay_s > 0:  # a board busy with something else first
                self.fleet.later(self.fleet.fetch_delay_s, lambda: self._request_missing(fetch))
            else:
                self._request_missing(fetch)

    def _request_missing(self, fetch: _Fetch) -> None:
        if not (self.connected and fetch.subscribed):
            return
        missing = [i for i in range(fetch.total) if i not in fetch.chunks][:MAX_INDICES]
        if not missing:
            return
        request = ChunkRequest(
            sha256=fetch.manifest.sha256, chunk_size=fetch.chunk_size, indices=missing
        )
        fetch.requests += 1
        self.client.publish(
            self.topics.xfer_request(self.device_id), self._encode(request), qos=QOS
        )
        sha, asked = fetch.manifest.sha256, fetch.requests
        self.fleet.later(self.fleet.retry_s, lambda: self._retry(sha, asked))

    def _retry(self, sha256: str, asked: int) -> None:
        """Ask again for what is missing once no chunk at all came for ``retry_s``, as the
        agent's fetch does: while chunks still flow, the missing ones are queued behind them."""
        fetch = self.fetches.get(sha256)
        if fetch is None or fetch.requests != asked:  # done, or something newer asked since
            return
        quiet = time.monotonic() - fetch.last_chunk
        if quiet < self.fleet.retry_s:
            self.fleet.later(self.fleet.retry_s - quiet, lambda: self._retry(sha256, asked))
            return
        self._request_missing(fetch)

    def _on_chunk(self, sha256: str, frame: bytes) -> None:
        fetch = self.fetches.get(sha256)
        if fetch is None:
            return
        try:
            chunk = decode_chunk(frame)
        except ValidationError:  # IntegrityError included: dropped, asked for again
            fetch.rejected += 1
            self.fleet.stats.chunks_rejected += 1
            return
        if chunk.sha256 != sha256 or chunk.total != fetch.total:
            fetch.rejected += 1
            self.fleet.stats.chunks_rejected += 1
            return
        fetch.last_chunk = time.monotonic()
        if chunk.index in fetch.chunks:
            fetch.duplicates += 1
            return
        fetch.chunks[chunk.index] = chunk.payload
        self.fleet.stats.chunks_received += 1
        if len(fetch.chunks) == fetch.total:
            self._finish_fetch(fetch)
        elif len(fetch.chunks) % MAX_INDICES == 0:
            self._request_missing(fetch)

    def _finish_fetch(self, fetch: _Fetch) -> None:
        data = b"".join(fetch.chunks[i] for i in range(fetch.total))
        sha = fetch.manifest.sha256
        if len(data) != fetch.manifest.size_bytes or hashlib.sha256(data).hexdigest() != sha:
            self.fleet.stats.hash_failures += 1
            logger.warning("board %s: artifact %s failed its hash", self.device_id, sha[:12])
            fetch.chunks.clear()
            self._request_missing(fetch)
            return
        self.client.unsubscribe(self.topics.artifact_chunks(sha))
        del self.fetches[sha]
        stats = TransferStats(
            sha256=sha,
            already_stored=False,
            chunks_total=fetch.total,
            chunks_written=fetch.total,
            duplicate_chunks=fetch.duplicates,
            rejected_chunks=fetch.rejected,
            requests_sent=fetch.requests,
            seconds=round(time.monotonic() - fetch.started, 4),
        )
        for job in list(self.jobs.values()):
            if any(f is fetch for f in job.fetches):
                job.transfers.append(stats)
                job.fetches = [f for f in job.fetches if f is not fetch]
                self._maybe_run(job)

    # -- the synthesized benchmark ---------------------------------------------------------------
    def _maybe_run(self, job: _Job) -> None:
        if job.fetches:
            return
        if isinstance(job.cmd, DeployCmd):
            result = DeployResult(
                deploy_id=job.cmd.deploy_id, outcome="committed",
                active_sha256=job.cmd.model.sha256, previous_sha256=None, detail="simulated",
            )  # fmt: skip
            self.jobs.pop(job.cmd_id, None)
            self._finish("deploy", job.cmd_id, Response(status="ok", data=to_data(result)))
            return
        self._respond(
            "benchmark",
            job.cmd_id,
            Response(status="progress", data={"stage": "running", "job_id": job.cmd.job_id}),
        )
        self.fleet.later(self.fleet.run_s * self.speed, lambda: self._finish_job(job))

    def _finish_job(self, job: _Job) -> None:
        cmd = job.cmd
        if not isinstance(cmd, BenchmarkCmd):
            return
        p50 = (0.4 + cmd.model.size_bytes / 2**20 * 1.5) * self.speed
        samples = sorted(p50 * self.rng.lognormvariate(0.0, 0.08) for _ in range(cmd.runs))

        def pct(q: float) -> float:
            return round(samples[min(len(samples) - 1, int(q * len(samples)))], 4)

        mean = sum(samples) / len(samples)
        std = (sum((s - mean) ** 2 for s in samples) / len(samples)) ** 0.5
        metric_value = round(min(1.0, max(0.0, self.rng.gauss(0.9, 0.02))), 4)
        result = BenchmarkResult(
            job_id=cmd.job_id,
            model_sha256=cmd.model.sha256,
            backend="simulated",
            runtime="bench.simfleet (no runtime: synthesized numbers)",
            threads=cmd.threads,
            size_bytes=cmd.model.size_bytes,
            load_ms=round(2.0 * self.speed, 3),
            warmup_runs=cmd.warmup_runs,
            runs=cmd.runs,
            latency_ms=LatencyStats(
                mean=round(mean, 4),
                std=round(std, 4),
                min=round(samples[0], 4),
                p50=pct(0.5),
                p90=pct(0.9),
                p95=pct(0.95),
                p99=pct(0.99),
                max=round(samples[-1], 4),
            ),
            peak_rss_mb=40.0,
            rss_growth_mb=round(cmd.model.size_bytes / 2**20, 3),
            metric="accuracy" if cmd.eval_data is not None else None,
            metric_value=metric_value if cmd.eval_data is not None else None,
            accuracy=metric_value if cmd.eval_data is not None else None,
            transfers=job.transfers,
        )
        self.jobs.pop(job.cmd_id, None)
        self._finish("benchmark", job.cmd_id, Response(status="ok", data=to_data(result)))

    # -- outbound --------------------------------------------------------------------------------
    def _finish(self, name: str, cmd_id: str, response: Response) -> None:
        """A final response: kept in the outbox until acknowledged, then published."""
        msg_id = new_msg_id()
        self.outbox[msg_id] = (self.topics.resp(self.device_id, name), response, cmd_id)
        self.journal[cmd_id] = msg_id
        self._publish_outbox_entry(msg_id)
        self.fleet.stats.results_sent += 1

    def _publish_outbox_entry(self, msg_id: str) -> None:
        topic, body, corr_id = self.outbox[msg_id]
        self.client.publish(topic, self._encode(body, corr_id=corr_id, msg_id=msg_id), qos=QOS)

    def _respond(self, name: str, corr_id: str | None, response: Body) -> None:
        payload = self._encode(response, corr_id=corr_id)
        self.client.publish(self.topics.resp(self.device_id, name), payload, qos=QOS)

    def _republish_outbox(self) -> None:
        for msg_id in list(self.outbox):
            self._publish_outbox_entry(msg_id)
            self.fleet.stats.results_resent += 1


class SimFleet:
    """``count`` simulated boards named ``{prefix}-0000``..., all driven by one thread.

    Use as a context manager: boards connect on enter (``wait_online`` waits until each is
    online) and leave with a clean DISCONNECT on exit; :meth:`kill` drops boards abruptly, so the
    broker publishes their Last Will. A dropped board does not reconnect.
    """

    def __init__(
        self,
        broker_url: str,
        base_topic: str,
        count: int,
        *,
        prefix: str = "sim",
        seed: int = 0,
        run_s: float = 0.05,
        retry_s: float = 3.0,
        outbox_retry_s: float = 15.0,  # the agent's default
        fetch_delay_s: float = 0.0,
        keepalive: int = 60,
    ) -> None:
        self.address = parse_broker_url(broker_url)
        self.topics = Topics(base_topic)
        self.seed = seed
        self.run_s = run_s
        self.retry_s = retry_s
        self.outbox_retry_s = outbox_retry_s
        self.fetch_delay_s = fetch_delay_s
        self.keepalive = keepalive
        self.client_prefix = f"simfleet-{new_msg_id()[:8]}"
        self.stats = SimStats()
        self.selector = selectors.DefaultSelector()
        self.boards = [SimBoard(self, f"{prefix}-{i:04d}", i) for i in range(count)]
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self._calls: list[Callable[[], None]] = []  # from other threads, run by the loop
        self._calls_lock = threading.Lock()
        self._online: set[str] = set()
        self._online_cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def device_ids(self) -> list[str]:
        return [b.device_id for b in self.boards]

    # -- lifecycle -------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> None:
        self.later(self.outbox_retry_s, self._outbox_tick)
        for board in self.boards:
            board.connect()
        self._thread = threading.Thread(target=self._loop, name="simfleet", daemon=True)
        self._thread.start()

    def wait_online(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        with self._online_cond:
            while len(self._online) < len(self.boards):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(
                        f"{len(self._online)} of {len(self.boards)} boards online after {timeout} s"
                    )
                self._online_cond.wait(left)

    def stop(self) -> None:
        self.call(lambda: [b.client.disconnect() for b in self.boards])
        time.sleep(0.2)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        for board in self.boards:
            sock = board.client.socket()
            if sock is not None:
                sock.close()
        self.selector.close()

    def kill(self, device_ids: list[str]) -> None:
        """Drop these boards' connections without DISCONNECT: the broker fires their Last Will."""
        wanted = set(device_ids)

        def drop() -> None:
            for board in self.boards:
                sock = board.client.socket()
                if board.device_id in wanted and sock is not None:
                    # paho reads the end of the stream next and closes its side itself.
                    sock.shutdown(socket.SHUT_RDWR)

        self.call(drop)

    def call(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the loop's thread (paho clients are not shared between threads here)."""
        with self._calls_lock:
            self._calls.append(fn)

    def later(self, delay_s: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + delay_s, next(self._seq), fn))

    def outbox_sizes(self) -> int:
        return sum(len(b.outbox) for b in self.boards)

    # -- the loop --------------------------------------------------------------------------------
    def _loop(self) -> None:
        next_misc = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            wait = 0.05
            if self._timers:
                wait = max(0.0, min(wait, self._timers[0][0] - now))
            try:
                events = self.selector.select(wait)
            except (OSError, ValueError):
                events = []
            for key, mask in events:
                board: SimBoard = key.data
                client = board.client
                if mask & selectors.EVENT_READ:
                    client.loop_read(100)
                if mask & selectors.EVENT_WRITE:
                    client.loop_write()
            with self._calls_lock:
                calls, self._calls = self._calls, []
            for fn in calls:
                self._run(fn)
            now = time.monotonic()
            while self._timers and self._timers[0][0] <= now:
                _, _, fn = heapq.heappop(self._timers)
                self._run(fn)
            if now >= next_misc:
                next_misc = now + 1.0
                for board in self.boards:
                    if board.client.socket() is not None:
                        board.client.loop_misc()

    @staticmethod
    def _run(fn: Callable[[], None]) -> None:
        try:
            fn()
        except Exception:
            logger.exception("simulated fleet callback failed")

    def _outbox_tick(self) -> None:
        for board in self.boards:
            if board.outbox and board.connected:
                board._republish_outbox()
        self.later(self.outbox_retry_s, self._outbox_tick)

    def _board_online(self, board: SimBoard) -> None:
        with self._online_cond:
            self._online.add(board.device_id)
            self._online_cond.notify_all()

    # -- paho's socket callbacks -----------------------------------------------------------------
    def _socket_open(self, _client: mqtt.Client, board: SimBoard, sock: Any) -> None:
        self.selector.register(sock, selectors.EVENT_READ, board)

    def _socket_close(self, _client: mqtt.Client, _board: SimBoard, sock: Any) -> None:
        try:
            self.selector.unregister(sock)
        except (KeyError, ValueError, OSError):
            pass

    def _register_write(self, _client: mqtt.Client, board: SimBoard, sock: Any) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ | selectors.EVENT_WRITE, board)
        except (KeyError, ValueError, OSError):
            pass

    def _unregister_write(self, _client: mqtt.Client, board: SimBoard, sock: Any) -> None:
        try:
            self.selector.modify(sock, selectors.EVENT_READ, board)
        except (KeyError, ValueError, OSError):
            pass


def write_artifact(
    path: str | os.PathLike[str], size_bytes: int, seed: int = 0
) -> ArtifactManifest:
    """A file of ``size_bytes`` pseudo-random bytes and its manifest, for boards that run nothing.

    Simulated boards only fetch and verify it; no runtime ever opens it, so it is not a model.
    """
    data = random.Random(seed).randbytes(size_bytes)
    with open(path, "wb") as out:
        out.write(data)
    return ArtifactManifest(
        sha256=hashlib.sha256(data).hexdigest(),
        size_bytes=size_bytes,
        format="onnx",
        precision="fp32",
        name=f"simulated-{size_bytes}",
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m bench.simfleet BROKER BASE COUNT``: boards online until stdin closes.

    Prints ``online`` once every board is online, and the board-side counters (JSON) at the end.
    """
    import argparse
    import json
    import sys
    from dataclasses import asdict

    parser = argparse.ArgumentParser(prog="python -m bench.simfleet", description=main.__doc__)
    parser.add_argument("broker")
    parser.add_argument("base_topic")
    parser.add_argument("count", type=int)
    parser.add_argument("--run-s", type=float, default=0.05, help="synthesized benchmark time")
    args = parser.parse_args(argv)
    with SimFleet(args.broker, args.base_topic, args.count, run_s=args.run_s) as sims:
        sims.wait_online(120)
        print("online", flush=True)
        sys.stdin.read()
        print(json.dumps(asdict(sims.stats)), flush=True)


if __name__ == "__main__":
    main()
