"""Artifact transfer speed and host egress: edgetailor against a bare paho publisher, side by side.

    python -m bench.transfer [--quick] [--runs 3] [--sizes-mb 20,90] [--boards 10,100]
                             [--brokers mosquitto,amqtt] [--out bench/results/transfer.json]

Speed: for each broker -- a private Mosquitto on a free port with its defaults (20 messages in
flight per client and, in Mosquitto 2.0, 1,000 queued; the bare publisher below has no flow control
and loses chunks with 100 queued), and the embedded amqtt broker (``edgetailor broker``) in its own
process -- and each artifact size, one run measures, in the same run and on the same broker,

- the baseline: a bare paho client publishing the same bytes in 128 KiB QoS 1 chunks to a bare paho
  subscriber in another process, from the first publish to the last chunk received;
- edgetailor: the host's ``Fleet`` serving the file, and in another process a board that fetches it
  with the agent's own code (``device_agent.fetch.ArtifactFetch`` into the agent's
  ``ArtifactStore`` on disk, framing from ``shared.transfer``, a paho client wired as the agent
  wires it), from the fetch's start to the whole file verified against its sha256 and stored.

The ratio is edgetailor's MB/s over the baseline's, per run; the table shows the median of the runs.

Egress: N boards (10 and 100; many per process, each with its own MQTT connection and its own copy
of the agent's fetch code, no runtime) fetch the same artifact at once from one host. The host
reaches the broker through a TCP proxy that counts every byte the host sends; that count over the
artifact's size is the egress ratio. Every board's file is checked against the sha256. The host
serves chunks only to a device with an open command naming the artifact, signed by the device's
pinned key: each board announces itself with a signed birth and the host records a command for it
(host.commands) before it asks.

Egress on the user's paths: N simulated boards (``bench.simfleet``: the real protocol, signed, in a
process of their own) are sent one artifact through each path a user takes, the host's bytes
counted the same way, from the first command to the last answer:

- ``deploy --model``: the rollout ``edgetailor deploy --model FILE --devices ...`` runs
  (host.deploy.Deployer, one wave);
- ``service``: ``edgetailor serve``'s service driving a rollout created as ``POST /deployments``
  creates it (host.deploy.create_rollout);
- ``campaign``: one benchmark command per board from a thread per board, as a campaign's scheduler
  sends them (host.commands.bench).

Results go to ``bench/results/transfer.json`` with every raw sample; ``--quick`` uses small sizes
and one run (well under a minute) for checking that the bench works.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import queue
import selectors
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt

from bench.goals import GoalRow

DEFAULT_OUT = Path("bench/results/transfer.json")
RAW_CHUNK = 128 * 1024
SPEED_GOAL = 0.8  # edgetailor MB/s over the bare publisher's, at least (issue 17)
EGRESS_GOAL = 1.2  # host egress over the artifact size, at most
PATHS = ("deploy --model", "service", "campaign")  # the user's paths, see path_egress
MOSQUITTO_LIMITS = ""  # the installed Mosquitto's defaults; see the module doc
MB = 1e6


# -- brokers ------------------------------------------------------------------------------------
@contextlib.contextmanager
def broker(kind: str, workdir: Path, mosquitto_config: str = MOSQUITTO_LIMITS) -> Iterator[str]:
    """A private broker of ``kind`` (mosquitto or amqtt) on a free port; yields its URL."""
    from tests.brokers import MosquittoProcess, free_port, wait_for_port

    port = free_port()
    if kind == "mosquitto":
        mosquitto = MosquittoProcess(workdir / "mosquitto", port, extra_config=mosquitto_config)
        mosquitto.start()
        try:
            yield mosquitto.url
        finally:
            mosquitto.stop()
        return
    if kind != "amqtt":
        raise ValueError(f"unknown broker {kind!r}: mosquitto or amqtt")
    proc = subprocess.Popen(
        [sys.executable, "-c", "from host.cli.main import main; main()", "broker"]
        + ["--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=30)
        yield f"mqtt://127.0.0.1:{port}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class CountingProxy:
    """A TCP forwarder that counts the bytes its clients send upstream (the host's egress)."""

    def __init__(self, target_port: int) -> None:
        self._target = ("127.0.0.1", target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.upstream_bytes = 0
        self._closed = False
        self._threads: list[threading.Thread] = []
        accept = threading.Thread(target=self._accept, daemon=True)
        accept.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            server = socket.create_connection(self._target)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for src, dst, counted in ((client, server, True), (server, client, False)):
                thread = threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True)
                thread.start()
                self._threads.append(thread)

    def _pump(self, src: socket.socket, dst: socket.socket, counted: bool) -> None:
        try:
            while data := src.recv(1 << 20):
                if counted:
                    self.upstream_bytes += len(data)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        self._closed = True
        self._listener.close()


# -- the board side, in child processes ---------------------------------------------------------
class SimulatedBoard:
    """One board's transfer path: its own MQTT connection and the agent's fetch and store code.

    Wired as ``device_agent.agent.Agent`` wires them: chunks of the artifact topic go to
    ``ArtifactFetch.on_chunk`` on the network thread, requests are QoS 1 envelopes on the device's
    ``xfer/req`` topic (not queued while disconnected), a reconnect re-subscribes and re-asks.
    """

    def __init__(self, broker_url: str, base_topic: str, device_id: str, data_dir: Path) -> None:
        from device_agent.store import ArtifactStore
        from shared.broker_url import parse_broker_url
        from shared.signing import Signer
        from shared.topics import Topics
        from shared.transfer import no_delay

        self.device_id = device_id
        self.topics = Topics(base_topic)
        self.store = ArtifactStore(data_dir)
        self.address = parse_broker_url(broker_url)
        self.signer = Signer.generate()  # the device key the host pins on its signed birth
        self.fetch: Any = None
        self.arrivals: list[float] = []  # when each chunk came, during receive()
        self.topic: str | None = None
        self.connected = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"bench-{device_id}",
            clean_session=True,
            protocol=mqtt.MQTTv311,
        )
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = lambda *_a: self.connected.clear()
        self.client.on_message = self._on_message
        self.client.on_socket_open = no_delay
        self.client.reconnect_delay_set(0.5, 10)
        self.client.will_set(self.topics.status(device_id), b"offline", qos=1, retain=True)

    def start(self) -> None:
        self.client.connect(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if not self.connected.wait(30):
            raise TimeoutError(f"{self.device_id} could not connect to {self.address}")

    def _on_connect(self, client: mqtt.Client, *_args: Any) -> None:
        from shared.messages import Birth

        fetch, topic = self.fetch, self.topic
        if topic is not None:
            client.subscribe(topic, qos=1)
        birth = self._encode(
            Birth(agent_version="bench.transfer", arch="simulated", cpu_model="simulated",
                  cores=1, ram_mb=1024.0, os="simulated", python="3")
        )  # fmt: skip
        client.publish(self.topics.birth(self.device_id), birth, qos=1, retain=True)
        client.publish(self.topics.status(self.device_id), b"online", qos=1, retain=True)
        self.connected.set()
        if fetch is not None:
            fetch.on_reconnect()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        fetch = self.fetch
        if fetch is not None and msg.topic == self.topic:
            self.arrivals.append(time.time())
            fetch.on_chunk(msg.payload)

    def _encode(self, body: Any) -> bytes:
        from shared.messages import encode

        return encode(body, device_id=self.device_id, signer=self.signer)

    def _request(self, request: Any) -> None:
        if not self.connected.is_set():
            return
        self.client.publish(self.topics.xfer_request(self.device_id), self._encode(request), qos=1)

    def receive(self, sha256: str, size: int, chunk_size: int, options: dict[str, Any]) -> dict:
        """Fetch, verify and store one artifact; returns timings and the fetch's own counters."""
        import msgspec

        from device_agent.fetch import ArtifactFetch
        from shared.hashing import sha256_file

        started = time.time()
        self.arrivals = []
        partial = self.store.open_partial(sha256, "npz", size, chunk_size)
        opened = time.time()
        fetch = ArtifactFetch(sha256, partial, self._request, **options)
        self.topic = self.topics.artifact_chunks(sha256)
        self.fetch = fetch
        self.client.subscribe(self.topic, qos=1)
        try:
            stats = fetch.run()
        except BaseException:
            fetch.close()
            raise
        finally:
            self.fetch = None
            self.client.unsubscribe(self.topic)
        fetched = time.time()
        path = self.store.commit(partial, sha256, "npz")
        finished = time.time()
        verified = sha256_file(path) == sha256
        path.unlink()
        return {
            "device_id": self.device_id,
            "started": started,
            "finished": finished,
            "seconds": finished - started,
            # where the time went: opening the partial file, receiving, verifying and storing
            "phases_s": [opened - started, fetched - opened, finished - fetched],
            # from the start: the first chunk's arrival, the last one's, the fetch's end
            "arrivals_s": [a - started for a in (self.arrivals[:1] + self.arrivals[-1:])]
            + [fetched - started],
            "verified": verified,
            "stats": msgspec.to_builtins(stats),
        }

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class RawSubscriber:
    """The baseline's receiving end: counts the chunks of one topic until all have come."""

    def __init__(self, broker_url: str, topic: str, count: int) -> None:
        from shared.broker_url import parse_broker_url

        self.address = parse_broker_url(broker_url)
        self.topic = topic
        self.count = count
        self.received = 0
        self.bytes = 0
        self.first_at: float | None = None
        self.last_at: float | None = None
        self.done = threading.Event()
        self.subscribed = threading.Event()
        self.started_at = time.time()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-raw-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_connect = lambda c, *_a: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message

    def _on_message(self, _client: mqtt.Client, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        now = time.time()
        if self.first_at is None:
            self.first_at = now
        self.received += 1
        self.bytes += len(msg.payload)
        self.last_at = now
        if self.received >= self.count:
            self.done.set()

    def start(self) -> None:
        self.client.connect(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if not self.subscribed.wait(30):
            raise TimeoutError("the raw subscriber got no SUBACK")

    def result(self, timeout: float, quiet_s: float = 5.0) -> dict[str, Any]:
        """Once all chunks came, or none for ``quiet_s`` (the broker dropped some), or timeout."""
        deadline = time.monotonic() + timeout
        while not self.done.wait(0.5) and time.monotonic() < deadline:
            last = self.last_at or self.started_at
            if time.time() - last > quiet_s:
                break
        self.client.disconnect()
        self.client.loop_stop()
        return {
            "received": self.received,
            "expected": self.count,
            "bytes": self.bytes,
            "first_at": self.first_at,
            "last_at": self.last_at,
        }


def _send(line: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def board_process() -> None:
    """Child process: simulated boards or a raw subscriber, driven by JSON lines on stdin."""
    import logging

    logging.basicConfig(level=logging.ERROR)
    setup = json.loads(sys.stdin.readline())
    if setup["mode"] == "raw":
        sub = RawSubscriber(setup["broker"], setup["topic"], setup["count"])
        sub.start()
        _send({"ready": True})
        sub.started_at = time.time()
        cpu = time.process_time()
        got = sub.result(setup["timeout_s"])
        _send({"raw": got, "cpu_s": time.process_time() - cpu})
        return
    data_dir = Path(setup["data_dir"])
    boards = [
        SimulatedBoard(setup["broker"], setup["base_topic"], name, data_dir / name)
        for name in setup["device_ids"]
    ]
    for board in boards:
        board.start()
    _send({"ready": True})
    json.loads(sys.stdin.readline())  # go
    cpu = time.process_time()
    results: queue.Queue[dict[str, Any]] = queue.Queue()

    def one(board: SimulatedBoard, delay: float) -> None:
        time.sleep(delay)
        try:
            results.put(
                board.receive(setup["sha256"], setup["size"], setup["chunk_size"], setup["options"])
            )
        except Exception as exc:  # noqa: BLE001 -- reported to the parent, which fails the run
            results.put({"device_id": board.device_id, "error": f"{type(exc).__name__}: {exc}"})

    threads = [
        threading.Thread(target=one, args=(b, d), daemon=True)
        for b, d in zip(boards, setup["delays"], strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    _send({"boards": [results.get() for _ in boards], "cpu_s": time.process_time() - cpu})
    for board in boards:
        board.close()


@dataclass
class Child:
    proc: subprocess.Popen[str]

    @classmethod
    def start(cls, setup: dict[str, Any]) -> Child:
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.transfer", "--board-process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
        )
        child = cls(proc)
        child.send(setup)
        return child

    def send(self, line: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(line) + "\n")
        self.proc.stdin.flush()

    def read(self, timeout: float) -> dict[str, Any]:
        assert self.proc.stdout is not None
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            raise TimeoutError(f"board process {self.proc.pid} said nothing for {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"board process {self.proc.pid} exited ({self.proc.wait()})")
        return json.loads(line)

    def close(self) -> None:
        try:
            self.proc.wait(10)  # it exits by itself once it has answered
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(30)


# -- one measurement each -----------------------------------------------------------------------
def round_trip_ms(broker_url: str, count: int, *, nodelay: bool) -> dict[str, float]:
    """Median and p90 of a small QoS 1 message answered by another client, through the broker.

    The latency the window protocol pays per request; with ``nodelay`` both clients set
    TCP_NODELAY as the agent and the host do (shared.transfer.no_delay).
    """
    from shared.broker_url import parse_broker_url
    from shared.transfer import no_delay

    address = parse_broker_url(broker_url)
    tag = uuid.uuid4().hex[:8]
    answered = threading.Event()
    asker, answerer = (
        mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{role}-{tag}")
        for role in ("ask", "answer")
    )
    answerer.on_message = lambda c, _u, m: c.publish(f"bench/{tag}/answer", m.payload, qos=1)
    asker.on_message = lambda _c, _u, _m: answered.set()
    samples: list[float] = []
    try:
        for client in (asker, answerer):
            if nodelay:
                client.on_socket_open = no_delay
            client.connect(address.host, address.port, keepalive=30)
            client.loop_start()
        answerer.subscribe(f"bench/{tag}/ask", qos=1)
        asker.subscribe(f"bench/{tag}/answer", qos=1)
        time.sleep(0.3)
        for _ in range(count):
            answered.clear()
            sent = time.perf_counter()
            asker.publish(f"bench/{tag}/ask", b"x" * 200, qos=1)
            if answered.wait(5):
                samples.append((time.perf_counter() - sent) * 1e3)
    finally:
        for client in (asker, answerer):
            client.disconnect()
            client.loop_stop()
    samples.sort()
    return {
        "median_ms": statistics.median(samples) if samples else float("nan"),
        "p90_ms": samples[int(0.9 * (len(samples) - 1))] if samples else float("nan"),
        "samples": len(samples),
    }


def raw_transfer(broker_url: str, path: Path, timeout_s: float) -> dict[str, Any]:
    """The baseline: publish the file's bytes in 128 KiB QoS 1 chunks to a subscriber process."""
    from shared.broker_url import parse_broker_url

    data = path.read_bytes()
    chunks = [data[i : i + RAW_CHUNK] for i in range(0, len(data), RAW_CHUNK)]
    topic = f"bench/raw/{uuid.uuid4().hex[:12]}"
    child = Child.start(
        {
            "mode": "raw",
            "broker": broker_url,
            "topic": topic,
            "count": len(chunks),
            "timeout_s": timeout_s,
        }
    )
    address = parse_broker_url(broker_url)
    publisher = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{uuid.uuid4().hex[:8]}"
    )
    try:
        child.read(30)
        publisher.connect(address.host, address.port, keepalive=30)
        publisher.loop_start()
        time.sleep(0.2)
        started, cpu = time.time(), time.process_time()
        for chunk in chunks:
            publisher.publish(topic, chunk, qos=1)
        answer = child.read(timeout_s + 30)
        sender_cpu_s = time.process_time() - cpu
        got = answer["raw"]
    finally:
        publisher.disconnect()
        publisher.loop_stop()
        child.close()
    complete = got["received"] == len(chunks)
    seconds = (got["last_at"] or started) - started
    return {
        "bytes": len(data),
        "chunks": len(chunks),
        "received": got["received"],
        "complete": complete,
        "seconds": seconds,
        # CPU seconds of the sending and the receiving process over the transfer
        "sender_cpu_s": sender_cpu_s,
        "receiver_cpu_s": answer["cpu_s"],
        "mb_s": len(data) / MB / seconds if complete and seconds > 0 else None,
    }


def edgetailor_transfers(
    broker_url: str,
    path: Path,
    sha256: str,
    boards: int,
    data_dir: Path,
    *,
    chunk_size: int,
    fetch_options: dict[str, Any],
    processes: int,
    count_egress: bool,
    timeout_s: float,
    spread_s: float = 0.0,
) -> dict[str, Any]:
    """``boards`` simulated boards fetch ``path`` from one Fleet; timings and egress.

    Board ``i`` starts ``i * spread_s / (boards - 1)`` s after the first: 0 is all at once. The
    host records a command naming the artifact for each board once it is registered (the chunk
    server serves nobody else), and so expects each board to ask.
    """
    from host.fleet import Fleet
    from host.store import Store
    from shared.broker_url import parse_broker_url
    from shared.manifest import ArtifactManifest
    from shared.messages import BenchmarkCmd

    base_topic = f"etbench-{uuid.uuid4().hex[:10]}"
    size = path.stat().st_size
    address = parse_broker_url(broker_url)
    proxy = CountingProxy(address.port) if count_egress else None
    host_url = f"mqtt://127.0.0.1:{proxy.port}" if proxy else broker_url
    device_ids = [f"bench-{uuid.uuid4().hex[:6]}-{i:03d}" for i in range(boards)]
    delays = {d: i * spread_s / max(1, boards - 1) for i, d in enumerate(device_ids)}
    groups = [device_ids[i::processes] for i in range(min(processes, boards))]
    children: list[Child] = []
    store = Store(f"sqlite:///{data_dir / f'host-{base_topic}.db'}")
    try:
        with Fleet(host_url, base_topic, store=store, chunk_size=chunk_size) as fleet:
            fleet.wait_synced(settle_s=0.2)
            manifest = ArtifactManifest(sha256=sha256, size_bytes=size, format="onnx",
                                        precision="fp32", name=path.name)  # fmt: skip
            fleet.offer(path, manifest, verify=False)
            for group in groups:
                children.append(
                    Child.start(
                        {
                            "mode": "fetch",
                            "broker": broker_url,
                            "base_topic": base_topic,
                            "device_ids": group,
                            "delays": [delays[d] for d in group],
                            "data_dir": str(data_dir),
                            "sha256": sha256,
                            "size": size,
                            "chunk_size": chunk_size,
                            "options": fetch_options,
                        }
                    )
                )
            for child in children:
                child.read(120)
            for device_id in device_ids:
                fleet.wait_for_device(device_id, 60)
            egress_before = proxy.upstream_bytes if proxy else 0
            published_before = fleet.chunks.chunks_published
            started, cpu = time.time(), time.process_time()
            sent = [
                # The boards do not run it; it lets them fetch the artifact, as a deploy does.
                fleet.commands.send(device_id, BenchmarkCmd(
                    job_id=fleet.commands.commands.new_id(), model=manifest,
                    chunk_size=chunk_size,
                )).command_id
                for device_id in device_ids
            ]  # fmt: skip
            # A device fetches once its command reached it: the boards start when it went out.
            deadline = time.monotonic() + 30
            while any(
                fleet.commands.commands.get(c).state == "pending"  # type: ignore[union-attr]
                for c in sent
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError("the commands naming the artifact were never published")
                time.sleep(0.02)
            for child in children:
                child.send({"go": True})
            results: list[dict[str, Any]] = []
            receiver_cpu_s = 0.0
            for child in children:
                answer = child.read(timeout_s)
                results += answer["boards"]
                receiver_cpu_s += answer["cpu_s"]
            finished = time.time()
            sender_cpu_s = time.process_time() - cpu
            egress = (proxy.upstream_bytes - egress_before) if proxy else None
            published = fleet.chunks.chunks_published - published_before
            coalesced = fleet.chunks.chunks_coalesced
    finally:
        for child in children:
            child.close()
        if proxy is not None:
            proxy.close()
        store.close()
    errors = [r for r in results if "error" in r]
    ok = [r for r in results if "error" not in r]
    total_chunks = -(-size // chunk_size)
    return {
        "boards": boards,
        "start_spread_s": spread_s,
        "bytes": size,
        "chunk_size": chunk_size,
        "chunks": total_chunks,
        "errors": [r["error"] for r in errors],
        "all_verified": not errors and all(r["verified"] for r in ok),
        "seconds_all": finished - started,
        "sender_cpu_s": sender_cpu_s,  # the host process (and, with egress, its proxy)
        "receiver_cpu_s": receiver_cpu_s,  # the board processes together
        "seconds_per_board": sorted(r["seconds"] for r in ok),
        "phases_s": [r["phases_s"] for r in ok] if boards <= 10 else None,
        "arrivals_s": [r["arrivals_s"] for r in ok] if boards <= 10 else None,
        "mb_s": size / MB / statistics.median(r["seconds"] for r in ok) if ok else None,
        "chunks_published": published,
        "chunks_coalesced": coalesced,
        "host_egress_bytes": egress,
        "egress_ratio": egress / size if egress is not None else None,
        "requests_sent": sum(r["stats"]["requests_sent"] for r in ok),
        "duplicate_chunks": sum(r["stats"]["duplicate_chunks"] for r in ok),
        "rejected_chunks": sum(r["stats"]["rejected_chunks"] for r in ok),
    }


# -- the bench ----------------------------------------------------------------------------------
def _artifact(workdir: Path, size: int) -> tuple[Path, str]:
    from shared.hashing import sha256_file

    path = workdir / f"artifact-{size}.bin"
    with open(path, "wb") as handle:
        left = size
        while left:
            step = min(left, 1 << 22)
            handle.write(os.urandom(step))
            left -= step
    return path, sha256_file(path)


def _tmpfs_dir() -> Path | None:
    shm = Path("/dev/shm")
    return shm if shm.is_dir() and os.access(shm, os.W_OK) else None


def run_bench(
    out: Path | None,
    *,
    sizes_mb: list[float],
    runs: int,
    boards: list[int],
    fanout_mb: float,
    spreads_s: list[float],
    brokers: list[str],
    chunk_size: int,
    deploy_boards: int = 10,
    deploy_mb: float = 20.0,
    path_boards: list[int] | None = None,
    paths: tuple[str, ...] = PATHS,
    fetch_options: dict[str, Any] | None = None,
    round_trips: int = 50,
    timeout_s: float = 300.0,
) -> dict[str, Any]:
    from shared.transfer import DEFAULT_CHUNK_SIZE

    fetch_options = fetch_options or {}
    report: dict[str, Any] = {
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average_at_start": list(os.getloadavg()),
        },
        "chunk_size": chunk_size,
        "default_chunk_size": DEFAULT_CHUNK_SIZE,
        "fetch_options": fetch_options,
        "mosquitto_config": MOSQUITTO_LIMITS.strip().splitlines(),
        "goals": {"speed_ratio_min": SPEED_GOAL, "egress_ratio_max": EGRESS_GOAL},
        "round_trip": {},
        "speed": [],
        "egress": [],
        "paths": [],
        "deploy": None,
        "started": time.time(),
    }
    with tempfile.TemporaryDirectory(prefix="et-xfer-") as tmp:
        workdir = Path(tmp)
        artifacts = {mb: _artifact(workdir, int(mb * MB)) for mb in sorted({*sizes_mb, fanout_mb})}
        for kind in brokers:
            with broker(kind, workdir / kind) as url:
                report["round_trip"][kind] = {
                    "paho_defaults": round_trip_ms(url, round_trips, nodelay=False),
                    "tcp_nodelay": round_trip_ms(url, round_trips, nodelay=True),
                }
                if kind == "mosquitto":
                    with broker(kind, workdir / "nodelay", "set_tcp_nodelay true\n") as fast:
                        report["round_trip"]["mosquitto_set_tcp_nodelay"] = {
                            "tcp_nodelay": round_trip_ms(fast, round_trips, nodelay=True)
                        }
                for mb in sizes_mb:
                    samples = [
                        _speed_sample(url, kind, mb, run, artifacts[mb], workdir, chunk_size,
                                      fetch_options, timeout_s)
                        for run in range(runs)
                    ]  # fmt: skip
                    report["speed"].append(_speed_row(kind, mb, samples))
                if kind != brokers[0]:
                    continue  # egress does not depend on the broker; measured on the first
                path, sha = artifacts[fanout_mb]
                variants = [(count, spread) for count in boards for spread in spreads_s]
                for count, spread in variants:
                    report["egress"].append(
                        _egress_row(url, kind, path, sha, count, spread, workdir,
                                    chunk_size=chunk_size, fetch_options=fetch_options,
                                    timeout_s=timeout_s)
                    )  # fmt: skip
                for count in path_boards if path_boards is not None else boards:
                    for path_name in paths:
                        report["paths"].append(
                            path_egress(url, workdir / "paths", path_name, count, path, sha,
                                        timeout_s)
                        )  # fmt: skip
                if deploy_boards:
                    report["deploy"] = deploy_egress(
                        url, workdir / "deploy", deploy_boards, deploy_mb, timeout_s
                    )
    report["seconds"] = round(time.time() - report["started"], 1)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _speed_sample(
    url: str,
    kind: str,
    mb: float,
    run: int,
    artifact: tuple[Path, str],
    workdir: Path,
    chunk_size: int,
    fetch_options: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    """One run: the bare publisher and edgetailor, the same bytes, the same broker, back to back."""
    path, sha = artifact
    # Alternate which goes first, so neither always meets a warm broker.
    order = ("raw", "edgetailor") if run % 2 == 0 else ("edgetailor", "raw")
    sample: dict[str, Any] = {}
    for which in order:
        if which == "raw":
            sample["raw"] = raw_transfer(url, path, timeout_s)
            continue
        disk = workdir / f"boards-{uuid.uuid4().hex[:6]}"
        sample["edgetailor"] = edgetailor_transfers(
            url, path, sha, 1, disk, chunk_size=chunk_size, fetch_options=fetch_options,
            processes=1, count_egress=False, timeout_s=timeout_s,
        )  # fmt: skip
        shutil.rmtree(disk, ignore_errors=True)
    raw_mb_s, ours_mb_s = sample["raw"]["mb_s"], sample["edgetailor"]["mb_s"]
    verified = sample["edgetailor"]["all_verified"]
    sample["ratio"] = ours_mb_s / raw_mb_s if raw_mb_s and ours_mb_s and verified else None
    print(
        f"  {kind} {mb:g} MB run {run + 1}: edgetailor {_fmt(ours_mb_s)} MB/s, "
        f"bare paho {_fmt(raw_mb_s)} MB/s",
        flush=True,
    )
    return sample


def _egress_row(
    url: str,
    kind: str,
    path: Path,
    sha: str,
    count: int,
    spread: float,
    workdir: Path,
    *,
    chunk_size: int,
    fetch_options: dict[str, Any],
    timeout_s: float,
) -> dict[str, Any]:
    shm = _tmpfs_dir()
    disk = Path(tempfile.mkdtemp(prefix="et-boards-", dir=shm or workdir))
    try:
        result = edgetailor_transfers(
            url, path, sha, count, disk, chunk_size=chunk_size, fetch_options=fetch_options,
            processes=min(count, 5), count_egress=True, timeout_s=timeout_s, spread_s=spread,
        )  # fmt: skip
    finally:
        shutil.rmtree(disk, ignore_errors=True)
    result["broker"] = kind
    result["board_storage"] = "tmpfs" if shm else "disk"
    result["passes"] = bool(
        result["all_verified"]
        and result["egress_ratio"] is not None
        and result["egress_ratio"] <= EGRESS_GOAL
    )
    print(
        f"  {_egress_label(result)}: egress {_fmt(result['egress_ratio'], '.2f')}x, "
        f"{result['chunks_published']} chunk sends for {result['chunks']} chunks, "
        f"{result['seconds_all']:.1f} s",
        flush=True,
    )
    return result


def _egress_label(row: dict[str, Any]) -> str:
    spread = row["start_spread_s"]
    start = "all at once" if not spread else f"starts spread over {spread:g} s"
    return f"{row['boards']} boards fetching {row['bytes'] / MB:g} MB, {start}"


def _mlp_model(out_dir: Path, size_mb: float) -> Path:
    """An MLP exported to .tflite with about ``size_mb`` MB of float32 weights."""
    import litert_torch
    import torch
    from torch import nn

    hidden = max(64, int(size_mb * MB / 4 / (64 + 256)))
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ).eval()  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"mlp-{size_mb:g}mb.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return path


def deploy_egress(
    broker_url: str, workdir: Path, boards: int, size_mb: float, timeout_s: float
) -> dict[str, Any]:
    """A real rollout (``host.deploy``, one wave) of one model to ``boards`` real agents.

    The agents are ``edgetailor-agent`` processes with their runtime and health check; the host's
    bytes to the broker are counted through the proxy, from the first command to the last outcome.
    """
    from host.deploy import Deployer, DeployTarget
    from host.fleet import Fleet
    from host.store import Store
    from shared.broker_url import parse_broker_url
    from tests.agents import AgentProcess

    model = _mlp_model(workdir, size_mb)
    size = model.stat().st_size
    base_topic = f"etbench-{uuid.uuid4().hex[:10]}"
    agents = [
        AgentProcess(broker_url, f"board-{i:02d}", workdir / f"board-{i:02d}", base_topic)
        for i in range(boards)
    ]
    proxy = CountingProxy(parse_broker_url(broker_url).port)
    store = Store(f"sqlite:///{workdir / 'host.db'}")
    try:
        for agent in agents:
            agent.start()
        for agent in agents:
            agent.wait_online(120)
        with Fleet(f"mqtt://127.0.0.1:{proxy.port}", base_topic, store=store) as fleet:
            fleet.wait_synced()
            for agent in agents:
                fleet.wait_for_device(agent.device_id, 60)
            egress_before = proxy.upstream_bytes
            published_before = fleet.chunks.chunks_published
            started = time.time()
            result = Deployer(fleet, health_runs=5, timeout_s=timeout_s).rollout(
                [DeployTarget(agent.device_id, model) for agent in agents], waves="100%"
            )
            seconds = time.time() - started
            egress = proxy.upstream_bytes - egress_before
            published = fleet.chunks.chunks_published - published_before
            chunk_size = fleet.chunk_size
    finally:
        for agent in agents:
            agent.terminate()
        proxy.close()
        store.close()
    row = {
        "boards": boards,
        "bytes": size,
        "chunk_size": chunk_size,
        "chunks": -(-size // chunk_size),
        "committed": sum(o.ok for o in result.outcomes),
        "outcomes": [o.outcome for o in result.outcomes],
        "seconds": seconds,
        "chunks_published": published,
        "host_egress_bytes": egress,
        "egress_ratio": egress / size,
    }
    row["passes"] = row["committed"] == boards and row["egress_ratio"] <= EGRESS_GOAL
    print(
        f"  deploy to {boards} agents, {size / MB:.1f} MB: egress {row['egress_ratio']:.2f}x, "
        f"{published} chunk sends for {row['chunks']} chunks, {row['committed']} committed",
        flush=True,
    )
    return row


def path_egress(
    broker_url: str,
    workdir: Path,
    path_name: str,
    boards: int,
    artifact: Path,
    sha256: str,
    timeout_s: float,
) -> dict[str, Any]:
    """One artifact to ``boards`` simulated boards through one of the user's :data:`PATHS`; the
    host's bytes to the broker counted through the proxy, from the first command to the last
    answer (bench.simfleet boards: fetch, verify, commit a deploy, answer a benchmark). The
    artifact was written before, as a user's model file is."""
    from host.deploy import Deployer, DeployTarget, create_rollout
    from host.fleet import Fleet
    from host.store import Store
    from host.store.deployments import DeploymentStore
    from shared.broker_url import parse_broker_url
    from shared.manifest import ArtifactManifest

    workdir.mkdir(parents=True, exist_ok=True)
    manifest = ArtifactManifest(sha256=sha256, size_bytes=artifact.stat().st_size,
                                format="onnx", precision="fp32", name=artifact.name)  # fmt: skip
    base_topic = f"etbench-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    sims = subprocess.Popen(
        [sys.executable, "-m", "bench.simfleet", broker_url, base_topic, str(boards)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    proxy = CountingProxy(parse_broker_url(broker_url).port)
    host_url = f"mqtt://127.0.0.1:{proxy.port}"
    db = f"sqlite:///{workdir / f'host-{base_topic}.db'}"
    store: Store | None = None
    service: Any = None
    try:
        assert sims.stdout is not None and sims.stdin is not None
        if sims.stdout.readline().strip() != "online":
            raise RuntimeError("the simulated boards did not come online")
        devices = [f"sim-{i:04d}" for i in range(boards)]
        targets = [DeployTarget(d, artifact, manifest=manifest) for d in devices]
        if path_name == "service":
            from host.service.service import Service, ServiceConfig

            service = Service(ServiceConfig(broker=host_url, db=db, base_topic=base_topic,
                                            home=workdir / "home"))  # fmt: skip
            service.start()
            fleet, store = service.fleet, service.store
        else:
            store = Store(db)
            fleet = Fleet(host_url, base_topic, store=store, outputs_dir=workdir / "outputs")
            fleet.connect()
            fleet.wait_synced(timeout=120, settle_s=0.2)
        for device in devices:
            fleet.wait_for_device(device, 120)
        egress_before = proxy.upstream_bytes
        published_before = fleet.chunks.chunks_published
        started = time.time()
        if path_name == "deploy --model":
            result = Deployer(fleet, health_runs=5, timeout_s=timeout_s).rollout(targets, "100%")
            done = sum(o.ok for o in result.outcomes)
        elif path_name == "service":
            rollout = create_rollout(store, targets, "100%", health_runs=5, timeout_s=timeout_s)
            dstore = DeploymentStore(store)
            deadline = time.monotonic() + timeout_s
            while (info := dstore.get_rollout(rollout.rollout_id)) is not None and info.open:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the service's rollout to {boards} boards did not finish")
                time.sleep(0.2)
            done = sum(t.state == "committed" for t in dstore.targets(rollout.rollout_id))
        else:
            from host.commands.bench import submit_benchmark, wait_benchmark

            answers: queue.Queue[bool] = queue.Queue()

            def measure(device: str) -> None:
                try:
                    command = submit_benchmark(fleet, device, artifact, model_manifest=manifest,
                                               runs=5)  # fmt: skip
                    wait_benchmark(fleet, command, timeout_s)
                    answers.put(True)
                except Exception:  # noqa: BLE001 -- counted as not done
                    answers.put(False)

            workers = [threading.Thread(target=measure, args=(d,)) for d in devices]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            done = sum(answers.get() for _ in devices)
        seconds = time.time() - started
        egress = proxy.upstream_bytes - egress_before
        published = fleet.chunks.chunks_published - published_before
        chunk_size = fleet.chunk_size
    finally:
        if service is not None:
            service.stop()
        elif store is not None:
            fleet.close()
            store.close()
        if sims.stdin is not None:
            sims.stdin.close()
        try:
            sims.wait(30)
        except subprocess.TimeoutExpired:
            sims.kill()
        proxy.close()
    size = artifact.stat().st_size
    row = {
        "path": path_name,
        "boards": boards,
        "bytes": size,
        "chunk_size": chunk_size,
        "chunks": -(-size // chunk_size),
        "done": done,
        "seconds": seconds,
        "chunks_published": published,
        "host_egress_bytes": egress,
        "egress_ratio": egress / size,
    }
    row["passes"] = done == boards and row["egress_ratio"] <= EGRESS_GOAL
    print(
        f"  {path_name} to {boards} boards, {size / MB:.1f} MB: egress {row['egress_ratio']:.2f}x"
        f", {published} chunk sends for {row['chunks']} chunks, {done} done",
        flush=True,
    )
    return row


def _speed_row(kind: str, mb: float, samples: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [s["ratio"] for s in samples if s["ratio"] is not None]
    ours = [s["edgetailor"]["mb_s"] for s in samples if s["edgetailor"]["mb_s"]]
    raw = [s["raw"]["mb_s"] for s in samples if s["raw"]["mb_s"]]
    ratio = statistics.median(ratios) if len(ratios) == len(samples) else None
    return {
        "broker": kind,
        "size_mb": mb,
        "runs": len(samples),
        "edgetailor_mb_s": statistics.median(ours) if ours else None,
        "raw_mb_s": statistics.median(raw) if raw else None,
        "ratio": ratio,
        "passes": ratio is not None and ratio >= SPEED_GOAL,
        "samples": samples,
    }


def _fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def render(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="artifact transfer, edgetailor against a bare paho publisher, same run")
    for column in ("measure", "edgetailor", "baseline, same run", "ratio", "goal", "result"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for kind, trip in report["round_trip"].items():
        default = trip.get("paho_defaults")
        table.add_row(
            "small-message round trip over "
            + ("mosquitto with set_tcp_nodelay true" if kind.endswith("nodelay") else kind)
            + " (median)",
            f"{trip['tcp_nodelay']['median_ms']:.1f} ms (TCP_NODELAY)",
            f"{default['median_ms']:.1f} ms (paho defaults)" if default else "",
            "",
            "",
            "info",
        )
    for row in report["speed"]:
        table.add_row(
            f"transfer over {row['broker']}, {row['size_mb']:g} MB (median of {row['runs']})",
            f"{_fmt(row['edgetailor_mb_s'])} MB/s",
            f"{_fmt(row['raw_mb_s'])} MB/s",
            _fmt(row["ratio"], ".2f"),
            f">= {SPEED_GOAL}",
            "pass" if row["passes"] else "MISS",
        )
    for row in report["egress"]:
        table.add_row(
            f"host egress, {_egress_label(row)}",
            f"{row['host_egress_bytes'] / MB:.1f} MB ({row['chunks_published']} chunk sends)",
            f"artifact {row['bytes'] / MB:.1f} MB ({row['chunks']} chunks)",
            _fmt(row["egress_ratio"], ".2f"),
            f"<= {EGRESS_GOAL}",
            "pass" if row["passes"] else "MISS",
        )
    for row in report.get("paths", []):
        table.add_row(
            f"host egress, {row['path']} to {row['boards']} simulated boards ({row['done']} done)",
            f"{row['host_egress_bytes'] / MB:.1f} MB ({row['chunks_published']} chunk sends)",
            f"artifact {row['bytes'] / MB:.1f} MB ({row['chunks']} chunks)",
            f"{row['egress_ratio']:.2f}",
            f"<= {EGRESS_GOAL}",
            "pass" if row["passes"] else "MISS",
        )
    deploy = report.get("deploy")
    if deploy:
        table.add_row(
            f"host egress, one {deploy['bytes'] / MB:.0f} MB model deployed to {deploy['boards']} "
            f"real agents at once ({deploy['committed']} committed)",
            f"{deploy['host_egress_bytes'] / MB:.1f} MB ({deploy['chunks_published']} chunk sends)",
            f"artifact {deploy['bytes'] / MB:.1f} MB ({deploy['chunks']} chunks)",
            f"{deploy['egress_ratio']:.2f}",
            f"<= {EGRESS_GOAL}",
            "pass" if deploy["passes"] else "MISS",
        )
    return table


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    """The rows with a goal, for ``make bench``'s table."""
    rows = [
        GoalRow(
            "transfer",
            f"artifact transfer over {row['broker']}, {row['size_mb']:g} MB",
            f"{_fmt(row['edgetailor_mb_s'])} MB/s",
            f">= {SPEED_GOAL}",
            row["passes"],
            baseline=f"{_fmt(row['raw_mb_s'])} MB/s (bare paho publisher)",
            ratio=row["ratio"],
        )
        for row in report["speed"]
    ]
    rows += [
        GoalRow(
            "transfer",
            f"host egress, {_egress_label(row)}",
            f"{row['host_egress_bytes'] / MB:.1f} MB",
            f"<= {EGRESS_GOAL}",
            row["passes"],
            baseline=f"artifact {row['bytes'] / MB:.1f} MB",
            ratio=row["egress_ratio"],
        )
        for row in report["egress"]
    ]
    rows += [
        GoalRow(
            "transfer",
            f"host egress, {row['path']} to {row['boards']} simulated boards",
            f"{row['host_egress_bytes'] / MB:.1f} MB",
            f"<= {EGRESS_GOAL}",
            row["passes"],
            baseline=f"artifact {row['bytes'] / MB:.1f} MB",
            ratio=row["egress_ratio"],
        )
        for row in report.get("paths", [])
    ]
    deploy = report.get("deploy")
    if deploy:
        rows.append(
            GoalRow(
                "transfer",
                f"host egress, {deploy['bytes'] / MB:.0f} MB deployed to {deploy['boards']} real agents",
                f"{deploy['host_egress_bytes'] / MB:.1f} MB",
                f"<= {EGRESS_GOAL}",
                deploy["passes"],
                baseline=f"artifact {deploy['bytes'] / MB:.1f} MB",
                ratio=deploy["egress_ratio"],
            )
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:] == ["--board-process"]:
        board_process()
        return 0
    parser = argparse.ArgumentParser(
        prog="python -m bench.transfer", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--quick", action="store_true", help="small sizes, one run, no deploy")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sizes-mb", default="20,90")
    parser.add_argument("--boards", default="10,100")
    parser.add_argument("--fanout-mb", type=float, default=20.0)
    parser.add_argument(
        "--spreads-s",
        default="0,0.5",
        help="egress runs: the boards' starts spread evenly over each of these many seconds",
    )
    parser.add_argument("--deploy-boards", type=int, default=10, help="real agents; 0 skips")
    parser.add_argument(
        "--path-boards", default=None,
        help="boards per user path (deploy --model, service, campaign); default: --boards",
    )  # fmt: skip
    parser.add_argument("--deploy-mb", type=float, default=20.0)
    parser.add_argument("--brokers", default="mosquitto,amqtt")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--window", type=int, default=None, help="the fetch's window, in chunks")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    from rich.console import Console

    from shared.transfer import DEFAULT_CHUNK_SIZE

    options: dict[str, Any] = {}
    if args.window is not None:
        options["window"] = options["initial_window"] = args.window
    settings: dict[str, Any] = {
        "sizes_mb": [float(v) for v in args.sizes_mb.split(",") if v],
        "runs": args.runs,
        "boards": [int(v) for v in args.boards.split(",") if v],
        "fanout_mb": args.fanout_mb,
        "spreads_s": [float(v) for v in args.spreads_s.split(",") if v],
        "deploy_boards": args.deploy_boards,
        "deploy_mb": args.deploy_mb,
        "round_trips": 50,
        "path_boards": (
            [int(v) for v in args.path_boards.split(",") if v] if args.path_boards else None
        ),
    }
    if args.quick:
        settings.update(sizes_mb=[4.0], runs=1, fanout_mb=2.0, deploy_boards=0, round_trips=10)
    report = run_bench(
        args.out,
        brokers=[b for b in args.brokers.split(",") if b],
        chunk_size=args.chunk_size or DEFAULT_CHUNK_SIZE,
        fetch_options=options,
        **settings,
    )
    Console(width=200).print(render(report))
    print(f"written to {args.out} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
