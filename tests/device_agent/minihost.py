"""MiniHost: a small real MQTT client playing the host side of the protocol, for agent tests.

It follows the same contract as the real host (host/fleet): it serves chunks of the artifacts it
offers on the per-artifact topic when a device asks, sends commands signed with its host key and a
per-device sequence (shared.signing), collects responses and acknowledges final results. Its
manifests are signed with the same key, which the agent pins on the first command. Tests can make
it misbehave on purpose (corrupt one chunk, stop serving, sign with another key or not at all) and
read back exactly which chunk indices each device asked for.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import msgspec
import paho.mqtt.client as mqtt

from shared.broker_url import parse_broker_url
from shared.errors import ValidationError
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import (
    DEFAULT_TTL_S,
    AckCmd,
    Body,
    ChunkRequest,
    DeployCmd,
    Message,
    Response,
    decode,
    encode,
    new_msg_id,
)
from shared.signing import Signer, sign_manifest
from shared.topics import Topics
from shared.transfer import chunk_bounds, chunk_count, encode_chunk


@dataclass
class Received:
    topic: str
    name: str | None
    message: Message


@dataclass
class ChunkRequestLog:
    device_id: str
    sha256: str
    chunk_size: int
    indices: list[int]
    at: float


@dataclass
class Offer:
    path: Path
    size: int
    corrupt_once: set[int] = field(default_factory=set)


class MiniHost:
    def __init__(
        self,
        broker_url: str,
        base_topic: str,
        *,
        auto_ack: bool = True,
        signer: Signer | None = None,
    ) -> None:
        self.signer = signer or Signer.generate()
        self._sequences: dict[str, int] = {}
        self._deploy_sequences: dict[str, int] = {}
        self.topics = Topics(base_topic)
        self.address = parse_broker_url(broker_url)
        self.auto_ack = auto_ack
        self.serving = True
        # Called as chunk_filter(sha256, index) before serving a chunk; False withholds it.
        self.chunk_filter: Callable[[str, int], bool] | None = None
        self.offers: dict[str, Offer] = {}
        self.chunk_requests: list[ChunkRequestLog] = []
        self.responses: list[Received] = []
        self.retained: dict[str, bytes] = {}
        self.chunks_published = 0
        self._cond = threading.Condition()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"minihost-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.on_connect = self._on_connect
        self.client.reconnect_delay_set(0.2, 2)
        self._connected = threading.Event()
        self.connections = 0

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> MiniHost:
        self.client.connect(self.address.host, self.address.port, keepalive=30)
        self.client.loop_start()
        if not self._connected.wait(10):
            raise TimeoutError("MiniHost could not connect")
        time.sleep(0.2)  # let the SUBACK land before the test publishes commands
        return self

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: object,
        flags: object,
        reason_code: object,
        properties: object,
    ) -> None:
        # Subscribing on every connect: a clean session loses subscriptions with the connection.
        client.subscribe([(t, 1) for t in self.topics.host_subscriptions()])
        with self._cond:
            self.connections += 1
            self._cond.notify_all()
        self._connected.set()

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- artifacts -------------------------------------------------------------------------------
    def offer(
        self,
        path: Path,
        fmt: str,
        precision: str = "fp32",
        *,
        sha256: str | None = None,
        sign: bool = True,
    ) -> ArtifactManifest:
        """Serve ``path`` and return its manifest, signed with the host key unless ``sign`` is
        False (``sha256`` overrides the real digest, for lies)."""
        path = Path(path)
        digest = sha256 or sha256_file(path)
        self.offers[digest] = Offer(path, path.stat().st_size)
        manifest = ArtifactManifest(
            sha256=digest,
            size_bytes=path.stat().st_size,
            format=fmt,
            precision=precision,
            name=path.name,
        )
        return sign_manifest(manifest, self.signer.private_key) if sign else manifest

    def for_deploy(self, manifest: ArtifactManifest, device_id: str) -> ArtifactManifest:
        """The manifest addressed to ``device_id`` with its next deploy sequence, signed, as the
        host's deployment layer makes it."""
        sequence = self._deploy_sequences.get(device_id, 0) + 1
        self._deploy_sequences[device_id] = sequence
        addressed = msgspec.structs.replace(manifest, target_device=device_id, sequence=sequence)
        return sign_manifest(addressed, self.signer.private_key)

    def corrupt_once(self, sha256: str, index: int) -> None:
        self.offers[sha256].corrupt_once.add(index)

    def requested_indices(
        self, sha256: str, device_id: str | None = None, since: float = 0.0
    ) -> list[int]:
        with self._cond:
            return [
                i
                for r in self.chunk_requests
                if r.sha256 == sha256
                and r.at >= since
                and (device_id is None or r.device_id == device_id)
                for i in r.indices
            ]

    def _serve(self, log: ChunkRequestLog) -> None:
        offer = self.offers.get(log.sha256)
        if offer is None:
            return
        total = chunk_count(offer.size, log.chunk_size)
        with open(offer.path, "rb") as handle:
            for index in log.indices:
                if index >= total or (
                    self.chunk_filter is not None and not self.chunk_filter(log.sha256, index)
                ):
                    continue
                offset, length = chunk_bounds(offer.size, log.chunk_size, index)
                handle.seek(offset)
                payload = handle.read(length)
                frame = bytearray(encode_chunk(log.sha256, index, total, offset, payload))
                if index in offer.corrupt_once:
                    offer.corrupt_once.discard(index)
                    frame[-1] ^= 0xFF  # payload no longer matches its hash
                self.client.publish(self.topics.artifact_chunks(log.sha256), bytes(frame), qos=1)
                self.chunks_published += 1

    # -- commands --------------------------------------------------------------------------------
    def next_seq(self, device_id: str) -> int:
        with self._cond:
            seq = self._sequences.get(device_id, 0) + 1
            self._sequences[device_id] = seq
            return seq

    def envelope(
        self,
        device_id: str,
        body: Body,
        *,
        msg_id: str | None = None,
        signer: Signer | None = None,
        seq: int | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        now: float | None = None,
        address: str | None = None,
    ) -> bytes:
        """A command envelope as the host signs it (``signer``/``seq``/``address``/``now`` change
        what a forger would)."""
        return encode(
            body,
            device_id=address or device_id,
            msg_id=msg_id or new_msg_id(),
            signer=signer or self.signer,
            seq=seq if seq is not None else self.next_seq(device_id),
            ttl_s=ttl_s,
            now=now,
        )

    def send(self, device_id: str, name: str, body: Body, *, msg_id: str | None = None) -> str:
        """Send a signed command; a deploy whose manifest names no device is addressed to this
        one with its next deploy sequence first, as the host's deployment layer does."""
        msg_id = msg_id or new_msg_id()
        if isinstance(body, DeployCmd) and body.model.target_device is None:
            body = msgspec.structs.replace(body, model=self.for_deploy(body.model, device_id))
        payload = self.envelope(device_id, body, msg_id=msg_id)
        self.client.publish(self.topics.cmd(device_id, name), payload, qos=1).wait_for_publish(5)
        return msg_id

    def send_raw(self, device_id: str, name: str, payload: bytes) -> None:
        self.client.publish(self.topics.cmd(device_id, name), payload, qos=1).wait_for_publish(5)

    def ack(self, device_id: str, msg_ids: list[str]) -> None:
        self.send(device_id, "ack", AckCmd(msg_ids=msg_ids))

    # -- waiting ---------------------------------------------------------------------------------
    def wait_for(
        self, predicate: Callable[[], object], timeout: float = 30.0, what: str = "condition"
    ) -> object:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                value = predicate()
                if value:
                    return value
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"MiniHost: no {what} within {timeout}s")
                self._cond.wait(min(remaining, 0.2))

    def responses_to(self, corr_id: str | None) -> list[Response]:
        with self._cond:
            return [r.message.body for r in self.responses if r.message.corr_id == corr_id]  # type: ignore[misc]

    def finals(self, corr_id: str) -> list[Received]:
        with self._cond:
            return [
                r
                for r in self.responses
                if r.message.corr_id == corr_id
                and getattr(r.message.body, "status", None) in ("ok", "error")
            ]

    def wait_final(self, corr_id: str, timeout: float = 60.0) -> Response:
        found = self.wait_for(lambda: self.finals(corr_id), timeout, f"final response to {corr_id}")
        return found[0].message.body  # type: ignore[index,union-attr,return-value]

    def errors_on(self, name: str) -> list[Received]:
        with self._cond:
            return [r for r in self.responses if r.name == name]

    # -- inbound ---------------------------------------------------------------------------------
    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse(msg.topic)
        if msg.retain or parsed.kind in ("status", "birth"):
            with self._cond:
                self.retained[msg.topic] = msg.payload
                self._cond.notify_all()
        if parsed.kind in ("status", "telemetry", "birth"):
            return
        try:
            message = decode(msg.payload)
        except ValidationError:
            return
        if parsed.kind == "xfer_req" and isinstance(message.body, ChunkRequest):
            body = message.body
            log = ChunkRequestLog(
                parsed.device_id or "",
                body.sha256,
                body.chunk_size,
                list(body.indices),
                time.time(),
            )
            with self._cond:
                self.chunk_requests.append(log)
                self._cond.notify_all()
            if self.serving:
                self._serve(log)
            return
        if parsed.kind == "resp":
            with self._cond:
                self.responses.append(Received(msg.topic, parsed.name, message))
                self._cond.notify_all()
            body = message.body
            if (
                self.auto_ack
                and isinstance(body, Response)
                and body.status in ("ok", "error")
                and parsed.name == "benchmark"
            ):
                device = parsed.device_id or ""
                self.client.publish(
                    self.topics.cmd(device, "ack"),
                    self.envelope(device, AckCmd(msg_ids=[message.msg_id])),
                    qos=1,
                )


def result_of(response: Response) -> dict:
    if response.status != "ok" or response.data is None:
        raise AssertionError(f"job failed: {msgspec.to_builtins(response)}")
    return response.data
