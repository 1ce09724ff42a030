"""A scripted device for host tests: a plain paho client speaking the device side of the contract.

It is the counterpart of the thing under test (the host's Fleet), not a copy of it: it publishes
exactly what a test tells it to, signed with a device key of its own unless told otherwise, and
records everything it receives.
"""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt

from shared.broker_url import parse_broker_url
from shared.messages import Birth, Body, Message, RuntimeInfo, decode, encode
from shared.signing import Signer
from shared.topics import STATUS_OFFLINE, STATUS_ONLINE, Topics
from shared.transfer import Chunk, decode_chunk


def sample_birth() -> Birth:
    return Birth(
        agent_version="0.1.0",
        arch="aarch64",
        cpu_model="Cortex-A72",
        cores=4,
        ram_mb=3906.0,
        os="Linux 6.1",
        python="3.11.2",
        runtimes=[
            RuntimeInfo(name="tflite", module="ai_edge_litert", version="2.3.0", formats=["tflite"])
        ],
    )


class ScriptedDevice:
    def __init__(
        self, broker_url: str, base_topic: str, device_id: str, signer: Signer | None = None
    ) -> None:
        self.topics = Topics(base_topic)
        self.device_id = device_id
        self.signer = signer or Signer.generate()
        self.commands: queue.Queue[tuple[str, Message]] = queue.Queue()
        self.chunks: queue.Queue[Chunk] = queue.Queue()
        self.responses: queue.Queue[Message] = queue.Queue()
        address = parse_broker_url(broker_url)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"scripted-{device_id}-{time.time_ns()}"
        )
        self.client.will_set(self.topics.status(device_id), STATUS_OFFLINE, qos=1, retain=True)
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        for topic in self.topics.device_subscriptions(device_id):
            self.client.subscribe(topic, qos=1)
        self.client.subscribe(self.topics.resp(device_id, "xfer"), qos=1)

    def _on_message(self, _c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        parsed = self.topics.parse(msg.topic)
        if parsed.kind == "art":
            self.chunks.put(decode_chunk(msg.payload))
        elif parsed.kind == "cmd":
            self.commands.put((parsed.name or "", decode(msg.payload)))
        elif parsed.kind == "resp":
            self.responses.put(decode(msg.payload))

    def announce(self, birth: Birth | None = None) -> None:
        self.publish(
            self.topics.birth(self.device_id),
            self.envelope(birth or sample_birth()),
            retain=True,
        )
        self.publish(self.topics.status(self.device_id), STATUS_ONLINE, retain=True)

    def envelope(
        self,
        body: Body,
        *,
        corr_id: str | None = None,
        msg_id: str | None = None,
        signer: Signer | None = None,
        unsigned: bool = False,
        device_id: str | None = None,
    ) -> bytes:
        """What this device sends: signed with its key (or ``signer``, or nothing at all)."""
        return encode(
            body,
            device_id=device_id or self.device_id,
            corr_id=corr_id,
            msg_id=msg_id,
            signer=None if unsigned else (signer or self.signer),
        )

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def send(
        self, topic: str, body: Body, *, corr_id: str | None = None, msg_id: str | None = None
    ) -> None:
        self.publish(topic, self.envelope(body, corr_id=corr_id, msg_id=msg_id))

    def watch_artifact(self, sha256: str) -> None:
        _rc, _mid = self.client.subscribe(self.topics.artifact_chunks(sha256), qos=1)
        time.sleep(0.2)  # let the SUBACK land before chunks are asked for

    def next_command(self, timeout: float = 5.0) -> tuple[str, Message]:
        return self.commands.get(timeout=timeout)

    def drain_chunks(self, quiet_s: float = 0.5) -> list[Chunk]:
        got: list[Chunk] = []
        while True:
            try:
                got.append(self.chunks.get(timeout=quiet_s))
            except queue.Empty:
                return got

    def offline(self) -> None:
        self.publish(self.topics.status(self.device_id), STATUS_OFFLINE, retain=True)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
