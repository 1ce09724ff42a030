"""Fault run: tampering, broker kills, agent kills and fuzzing, with the count of each outcome.

    python -m bench.faults [--flips 1000] [--transfers 20] [--kills 20] [--fuzz-examples N]
                           [--out bench/results/faults.json] [--skip tamper,broker,agent,fuzz]

Every loop lives here once; the tests in tests/device_agent/test_tamper.py, test_fuzz.py and
tests/e2e/test_faults.py run the same loops with small counts and assert on the counts this module
returns. What each loop proves:

- tamper: single-bit flips of an artifact (whole-file sha256 in the store), of chunk frames (the
  receiver's framing and manifest checks) and of a signed manifest (decoding or the Ed25519
  signature) are all refused before any runtime sees the bytes, and the store keeps exactly the
  artifacts it had. A flip of a manifest that decodes to the very same manifest (a float's 17th
  digit) changes nothing that the signature covers; those are counted apart as ``unchanged``.
- broker: Mosquitto is SIGKILLed at a random point of each of N transfers of a multi-MB model and
  restarted; every job ends (result or a clear error code) within its timeout and nothing in the
  agent's store ever has a content hash other than its name.
- agent: the agent is SIGKILLed at random points of download, verification/benchmark and report
  (the last through the agent's after-persist test hook) and restarted; every job's result reaches
  the host exactly once and the store holds only valid artifacts.
- fuzz: hypothesis drives the agent's and the host's message handlers with generated topics and
  payloads; the count of inputs tried is printed.

The e2e loops start real processes (Mosquitto, ``edgetailor-agent``) through the helpers in
``tests/``; the machine needs ``mosquitto`` on the PATH.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from bench.goals import GoalRow
from device_agent.errors import JobError
from device_agent.fetch import ArtifactFetch
from device_agent.store import ArtifactStore
from shared.errors import SignatureError, ValidationError
from shared.hashing import sha256_bytes, sha256_file
from shared.manifest import ArtifactManifest, decode_manifest, encode_manifest
from shared.messages import ChunkRequest
from shared.signing import verify_manifest
from shared.transfer import chunk_bounds, chunk_count, encode_chunk

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/faults.json")


def flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit >> 3] ^= 1 << (bit & 7)
    return bytes(flipped)


def store_snapshot(store_dir: Path) -> dict[str, str]:
    """name -> sha256 of every file in a store directory."""
    return {p.name: sha256_file(p) for p in sorted(store_dir.iterdir()) if p.is_file()}


def invalid_store_entries(store_dir: Path) -> list[str]:
    """Store files whose content hash is not the one their name claims (must always be empty)."""
    if not store_dir.is_dir():
        return []
    return [
        p.name
        for p in sorted(store_dir.iterdir())
        if p.is_file() and sha256_file(p) != p.name.split(".", 1)[0]
    ]


# -- tampering, in-process ---------------------------------------------------------------------
@dataclass
class FlipCounts:
    tried: int = 0
    rejected: int = 0
    unchanged: int = 0  # the flip decoded to the identical, still validly signed manifest
    accepted: int = 0  # a changed input that passed: must stay 0
    store_changed: int = 0  # iterations after which the store differed: must stay 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _receive_file(
    store: ArtifactStore, data: bytes, manifest: ArtifactManifest, chunk_size: int
) -> Path:
    """Receive ``data`` into the store under ``manifest`` as the agent does, chunk by chunk."""
    partial = store.open_partial(manifest.sha256, manifest.format, manifest.size_bytes, chunk_size)
    try:
        for index in range(partial.total):
            offset, length = partial.bounds(index)
            partial.write(index, data[offset : offset + length])
    except BaseException:
        partial.discard()
        raise
    return store.commit(partial, manifest.sha256, manifest.format)


def artifact_flips(
    store: ArtifactStore, data: bytes, manifest: ArtifactManifest, flips: int, rng: random.Random
) -> FlipCounts:
    """Each flip: the received file differs from its manifest in one bit; commit must refuse it."""
    counts = FlipCounts()
    before = store_snapshot(store.store_dir)
    chunk_size = max(1024, min(1024 * 1024, len(data)))
    for _ in range(flips):
        counts.tried += 1
        tampered = flip_bit(data, rng.randrange(len(data) * 8))
        try:
            _receive_file(store, tampered, manifest, chunk_size)
        except JobError as exc:
            counts.reject(exc.code)
        else:
            counts.accepted += 1
        if store_snapshot(store.store_dir) != before or any(store.partial_dir.iterdir()):
            counts.store_changed += 1
    return counts


def _frames(data: bytes, sha256: str, chunk_size: int) -> list[bytes]:
    total = chunk_count(len(data), chunk_size)
    frames = []
    for index in range(total):
        offset, length = chunk_bounds(len(data), chunk_size, index)
        frames.append(encode_chunk(sha256, index, total, offset, data[offset : offset + length]))
    return frames


def _fetch_for(store: ArtifactStore, manifest: ArtifactManifest, chunk_size: int) -> ArtifactFetch:
    partial = store.open_partial(manifest.sha256, manifest.format, manifest.size_bytes, chunk_size)

    def no_request(_request: ChunkRequest) -> None:
        return None

    return ArtifactFetch(manifest.sha256, partial, no_request)


def chunk_flips(
    store: ArtifactStore,
    data: bytes,
    manifest: ArtifactManifest,
    flips: int,
    rng: random.Random,
    chunk_size: int = 1024,
) -> FlipCounts:
    """Each flip hits one bit of one chunk frame (header or payload); the receiver must drop it."""
    counts = FlipCounts()
    frames = _frames(data, manifest.sha256, chunk_size)
    fetch = _fetch_for(store, manifest, chunk_size)
    try:
        for _ in range(flips):
            counts.tried += 1
            index = rng.randrange(len(frames))
            frame = frames[index]
            rejected_before = fetch.rejected
            fetch.on_chunk(flip_bit(frame, rng.randrange(len(frame) * 8)))
            if fetch.rejected == rejected_before + 1 and fetch.partial.stored_count() == 0:
                counts.reject("bad_chunk")
            else:
                counts.accepted += 1
    finally:
        fetch.partial.discard()
    return counts


def manifest_flips(
    signed: ArtifactManifest,
    trusted: Any,
    device_id: str,
    flips: int,
    rng: random.Random,
    *,
    min_sequence: int = 0,
) -> FlipCounts:
    """Each flip hits one bit of the signed manifest as sent (JSON); decode or verify must fail."""
    counts = FlipCounts()
    raw = encode_manifest(signed)
    for _ in range(flips):
        counts.tried += 1
        try:
            decoded = decode_manifest(flip_bit(raw, rng.randrange(len(raw) * 8)))
        except ValidationError:
            counts.reject("decode")
            continue
        try:
            verify_manifest(decoded, trusted, device_id=device_id, min_sequence=min_sequence)
        except SignatureError:
            counts.reject("signature")
            continue
        if decoded == signed:
            counts.unchanged += 1
        else:
            counts.accepted += 1
    return counts


def policy_cases(
    store: ArtifactStore,
    data: bytes,
    good: ArtifactManifest,
    key: Any,
    other_key: Any,
    device_id: str,
    current_sequence: int,
) -> dict[str, str]:
    """The named attacks of the issue; each maps to the error that refused it ("" if accepted)."""
    from shared.signing import sign_manifest

    def signed(**changes: Any) -> ArtifactManifest:
        return sign_manifest(msgspec.structs.replace(good, **changes), key)

    manifests = {
        "unsigned": msgspec.structs.replace(good, signature=None, key_id=None),
        "wrong_key": sign_manifest(good, other_key),
        "replayed_older": signed(sequence=current_sequence - 1),
        "expired": signed(expires=time.time() - 60),
        "other_device": signed(target_device=f"{device_id}-other"),
    }
    outcomes: dict[str, str] = {}
    for case, manifest in manifests.items():
        try:
            verify_manifest(
                manifest, key.public_key(), device_id=device_id, min_sequence=current_sequence
            )
            outcomes[case] = ""
        except SignatureError as exc:
            outcomes[case] = f"SignatureError: {exc}"
    chunk_size = 1024
    for case, served in (("truncated", data[: len(data) - 100]), ("oversized", data + bytes(3000))):
        fetch = _fetch_for(store, good, chunk_size)
        try:
            for frame in _frames(served, good.sha256, chunk_size):
                fetch.on_chunk(frame)
            complete = fetch.partial.complete()
        finally:
            fetch.partial.discard()
        rejected = f"{fetch.rejected} chunks rejected, transfer incomplete"
        outcomes[case] = "" if complete else rejected
    too_big = encode_manifest(good).replace(
        f'"size_bytes":{good.size_bytes}'.encode(), b'"size_bytes":3000000000'
    )
    try:
        decode_manifest(too_big)
        outcomes["oversized_manifest"] = ""
    except ValidationError as exc:
        outcomes["oversized_manifest"] = f"ValidationError: {exc}"
    return outcomes


def run_tamper(data: bytes, flips: int, seed: int = 0) -> dict[str, Any]:
    """The in-process tamper loops on ``data`` (an artifact's bytes); returns their counts."""
    from shared.signing import generate_key, sign_manifest

    rng = random.Random(seed)
    key, other_key = generate_key(), generate_key()
    device_id = "bench-dev"
    manifest = ArtifactManifest(
        sha256=sha256_bytes(data), size_bytes=len(data), format="tflite", precision="fp32",
        name="model.tflite", created=time.time(), target_device=device_id, sequence=5,
        expires=time.time() + 3600,
    )  # fmt: skip
    signed = sign_manifest(manifest, key)
    with tempfile.TemporaryDirectory(prefix="et-tamper-") as tmp:
        store = ArtifactStore(Path(tmp))
        active = _receive_file(store, data, signed, 1024 * 1024)
        active_sha = sha256_file(active)
        # The artifact flips need a store without the good copy (commit would see it already there).
        flip_store = ArtifactStore(Path(tmp) / "flips")
        results = {
            "artifact_flips": asdict(artifact_flips(flip_store, data, signed, flips, rng)),
            "chunk_flips": asdict(chunk_flips(flip_store, data, signed, flips, rng)),
            "manifest_flips": asdict(
                manifest_flips(signed, key.public_key(), device_id, flips, rng, min_sequence=5)
            ),
            "policy": policy_cases(flip_store, data, signed, key, other_key, device_id, 5),
        }
        results["active_unchanged"] = sha256_file(active) == active_sha == signed.sha256
        results["flip_store_files"] = sorted(p.name for p in flip_store.store_dir.iterdir())
    return results


# -- fuzzing the message handlers ----------------------------------------------------------------
class RecordingClient:
    """Stands in for the agent's paho client in the fuzz loop: records what the agent publishes."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes]] = []

    def publish(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False) -> None:
        self.published.append((topic, payload))

    def subscribe(self, *args: Any, **kwargs: Any) -> None:
        return None

    def unsubscribe(self, *args: Any, **kwargs: Any) -> None:
        return None


class ExceptionLog(logging.Handler):
    """Collects log records that carry a traceback: a handler's catch-all fired."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.records.append(record)


def _json_values() -> Any:
    from hypothesis import strategies as st

    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False), st.text(max_size=40),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=5), st.dictionaries(st.text(max_size=12), inner, max_size=5)
        ),
        max_leaves=20,
    )


def message_strategy(base_topic: str, device_ids: list[str]) -> Any:
    """(topic, payload) pairs: valid topics with hostile payloads, envelopes with hostile bodies,
    valid messages with one byte changed, and topics outside the contract."""
    from hypothesis import strategies as st

    from shared.messages import SCHEMAS, AckCmd, CancelCmd, PingCmd, encode
    from shared.topics import Topics

    topics = Topics(base_topic)
    names = st.sampled_from(["benchmark", "deploy", "rollback", "ack", "cancel", "ping", "error"])
    devices = st.sampled_from(device_ids)
    sha = st.text("0123456789abcdef", min_size=64, max_size=64)
    topic = st.one_of(
        st.builds(topics.cmd, devices, names),
        st.builds(topics.resp, devices, names),
        st.builds(topics.status, devices),
        st.builds(topics.birth, devices),
        st.builds(topics.telemetry, devices),
        st.builds(topics.xfer_request, devices),
        st.builds(topics.artifact_chunks, sha),
        st.just(topics.host_status()),
        st.text(max_size=80).map(lambda t: f"{topics.root}/{t}"),
    )

    def body_for(schema: str) -> Any:
        cls = SCHEMAS.get(schema) if schema in SCHEMAS else None
        if cls is None:
            return _json_values()
        fields = [f.encode_name for f in msgspec.structs.fields(cls)]
        return st.dictionaries(st.sampled_from(fields or ["x"]), _json_values(), max_size=8)

    known = sorted(name for name, _cls in SCHEMAS.items())
    schema = st.one_of(st.sampled_from(known), st.text(max_size=20))
    msg_id = st.one_of(st.text(max_size=70), st.uuids().map(lambda u: u.hex))
    envelope = schema.flatmap(
        lambda name: st.fixed_dictionaries(
            {
                "schema": st.just(name),
                "v": st.one_of(st.just(1), st.integers()),
                "msg_id": msg_id,
                "ts": st.floats(allow_nan=False, allow_infinity=False),
                "body": body_for(name),
            },
            optional={
                "corr_id": msg_id,
                "device_id": st.text(max_size=70),
                "extra": _json_values(),
            },
        )
    ).map(lambda d: msgspec.json.encode(d))
    valid = st.sampled_from(
        [encode(PingCmd()), encode(CancelCmd(job_id="j1")), encode(AckCmd(msg_ids=["a", "b"]))]
    )
    mutated = st.tuples(valid, st.integers(min_value=0), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
    )
    payload = st.one_of(st.binary(max_size=600), envelope, mutated, valid)
    return st.tuples(topic, payload)


def deliver(handler: Callable[..., None], client: Any, topic: str, payload: bytes) -> None:
    """Hand one message to a paho on_message callback, as paho's network thread would."""
    import paho.mqtt.client as mqtt

    msg = mqtt.MQTTMessage(mid=1, topic=topic.encode("utf-8"))
    msg.payload = payload
    msg.qos = 1
    handler(client, None, msg)


def fuzz_agent_once(agent: Any, recorder: RecordingClient, topic: str, payload: bytes) -> None:
    """One input to the agent; a malformed command on its own topic must get an error response
    while the agent's budget of answers to bad commands lasts (a flood gets a bounded number)."""
    from shared.messages import decode
    from shared.topics import Topics

    before = len(recorder.published)
    answerable = agent.refusals.left()
    deliver(agent._on_message, recorder, topic, payload)
    try:
        parsed = Topics(agent.config.base_topic).parse(topic)
    except ValidationError:
        return
    if parsed.kind != "cmd" or parsed.device_id != agent.device_id:
        return
    try:
        message = decode(payload)
        malformed = message.schema != f"cmd.{parsed.name}"
    except ValidationError:
        malformed = True
    if malformed and answerable:
        answers = [decode(p).body for _t, p in recorder.published[before:]]
        if not any(getattr(a, "status", None) == "error" for a in answers):
            raise AssertionError(f"malformed command on {topic} was not answered: {payload[:80]!r}")


def run_fuzz(examples: int, broker_url: str, seed: int = 0) -> dict[str, Any]:
    """Fuzz the agent's and the host's on_message handlers with ``examples`` inputs each."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed

    from device_agent.agent import Agent, AgentConfig
    from host.fleet import Fleet
    from shared.broker_url import parse_broker_url

    counts = {"agent_inputs": 0, "host_inputs": 0, "agent_tracebacks": 0, "host_tracebacks": 0}
    base = f"etfuzz-{random.Random(seed).getrandbits(40):x}"
    device_id = "fuzz-dev"
    fuzz_settings = settings(
        max_examples=examples, deadline=None, database=None,
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    agent_log, host_log = ExceptionLog(), ExceptionLog()
    logging.getLogger("device_agent").addHandler(agent_log)
    logging.getLogger("host").addHandler(host_log)
    try:
        with tempfile.TemporaryDirectory(prefix="et-fuzz-") as tmp:
            agent = Agent(AgentConfig(parse_broker_url(broker_url), device_id, Path(tmp), base))
            recorder = RecordingClient()
            agent.client = recorder  # type: ignore[assignment]

            @hypothesis_seed(seed)
            @fuzz_settings
            @given(message_strategy(base, [device_id, "other-dev"]))
            def agent_target(message: tuple[str, bytes]) -> None:
                counts["agent_inputs"] += 1
                fuzz_agent_once(agent, recorder, *message)

            agent_target()
            with Fleet(broker_url, base, store=f"sqlite:///{tmp}/host.db") as fleet:

                @hypothesis_seed(seed)
                @fuzz_settings
                @given(message_strategy(base, [device_id, "other-dev"]))
                def host_target(message: tuple[str, bytes]) -> None:
                    counts["host_inputs"] += 1
                    deliver(fleet._on_message, None, *message)

                host_target()
                counts["host_devices_seen"] = len(fleet.devices())
    finally:
        logging.getLogger("device_agent").removeHandler(agent_log)
        logging.getLogger("host").removeHandler(host_log)
    counts["agent_tracebacks"] = len(agent_log.records)
    counts["host_tracebacks"] = len(host_log.records)
    counts["first_traceback"] = next(
        (r.getMessage() + "\n" + logging.Formatter().formatException(r.exc_info)  # type: ignore[arg-type]
         for r in agent_log.records + host_log.records),
        None,
    )  # fmt: skip
    return counts


# -- broker and agent kills, end to end ----------------------------------------------------------
JOB_TIMEOUT_S = 90.0


def model_variant(model: Path, out_dir: Path, index: int, rng: random.Random) -> Path:
    """A distinct artifact of the same model: TFLite ignores bytes after the flatbuffer, and a new
    sha256 makes the agent fetch it again instead of finding it stored."""
    path = out_dir / f"variant-{index}.tflite"
    path.write_bytes(model.read_bytes() + rng.randbytes(16))
    return path


def _wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.005)
    return True


def _outcome(fleet: Any, command_id: str, timeout: float) -> str:
    from host.commands.bench import wait_benchmark
    from host.errors import JobFailedError, JobTimeoutError

    try:
        wait_benchmark(fleet, command_id, timeout)
        return "ok"
    except JobFailedError as exc:
        return f"error:{exc.code}"
    except JobTimeoutError:
        return "no_answer"


def _final(fleet: Any, command_id: str) -> bool:
    info = fleet.commands.commands.get(command_id)
    return info is not None and info.final


def run_broker_kills(model: Path, transfers: int, workdir: Path, seed: int = 0) -> dict[str, Any]:
    """SIGKILL the broker at a random point of each transfer of ``model`` and restart it."""
    from host.commands.bench import submit_benchmark
    from host.fleet import Fleet
    from host.store import Store
    from tests.agents import AgentProcess
    from tests.brokers import MosquittoProcess, free_port

    rng = random.Random(seed)
    chunk_size = 16 * 1024
    total = chunk_count(model.stat().st_size, chunk_size)
    base = f"etfault-{rng.getrandbits(40):x}"
    broker = MosquittoProcess(workdir / "mosquitto", port=free_port())
    broker.start()
    agent = AgentProcess(
        broker.url, "fault-broker", workdir / "agent", base,
        ["--xfer-retry-s", "1", "--outbox-retry-s", "1", "--xfer-timeout-s", "30",
         "--telemetry-interval", "1"],
    )  # fmt: skip
    outcomes: dict[str, int] = {}
    killed_mid_transfer = 0
    invalid: list[str] = []
    started = time.monotonic()
    try:
        agent.start()
        agent.wait_online(timeout=60)
        with (
            Store(f"sqlite:///{workdir / 'host.db'}") as store,
            Fleet(broker.url, base, store=store, chunk_size=chunk_size) as fleet,
        ):
            for index in range(transfers):
                variant = model_variant(model, workdir, index, rng)
                published = fleet.chunks.chunks_published
                fleet.wait_for_device("fault-broker", 60)
                job = submit_benchmark(
                    fleet, "fault-broker", variant, runs=1, warmup_s=0.0, min_s=0.0, timeout_s=60
                )
                target = published + int(rng.uniform(0.05, 0.95) * total)
                _wait_until(
                    lambda t=target, j=job: fleet.chunks.chunks_published >= t or _final(fleet, j),
                    30,
                )
                killed_mid_transfer += int(not _final(fleet, job))
                broker.kill()
                time.sleep(rng.uniform(0.0, 1.5))
                broker.start()
                outcome = _outcome(fleet, job, JOB_TIMEOUT_S)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                invalid += invalid_store_entries(agent.data_dir / "store")
                variant.unlink()
    finally:
        agent.terminate(timeout=10)
        broker.stop()
    return {
        "transfers": transfers,
        "chunks_per_transfer": total,
        "model_bytes": model.stat().st_size,
        "killed_mid_transfer": killed_mid_transfer,
        "outcomes": outcomes,
        "invalid_stored_artifacts": len(invalid),
        "seconds": round(time.monotonic() - started, 1),
    }


KILL_POINTS = ("download", "verify", "report", "activate_before_switch", "activate_after_switch")


def run_agent_kills(
    model: Path, kills: int, workdir: Path, broker_url: str, seed: int = 0
) -> dict[str, Any]:
    """SIGKILL the agent at random points of download, verify, activate and report, restart it, and
    count how often each finished job's result was stored by the host."""
    from host.commands.bench import submit_benchmark
    from host.fleet import Fleet
    from host.store import Store
    from shared.messages import DeployCmd
    from tests.agents import AgentProcess

    rng = random.Random(seed)
    chunk_size = 16 * 1024
    total = chunk_count(model.stat().st_size, chunk_size)
    base = f"etfault-{rng.getrandbits(40):x}"
    agent = AgentProcess(
        broker_url, "fault-agent", workdir / "agent", base,
        ["--xfer-retry-s", "1", "--outbox-retry-s", "1", "--telemetry-interval", "1"],
    )  # fmt: skip
    deliveries: dict[str, int] = {}
    outcomes: dict[str, int] = {}
    points: dict[str, int] = {}
    active_ok = active_checks = 0
    invalid: list[str] = []
    store = Store(f"sqlite:///{workdir / 'host.db'}")
    started = time.monotonic()

    def active_sha() -> str | None:
        link = agent.data_dir / "active"
        return link.resolve().name if link.is_symlink() else None

    try:
        agent.start()
        agent.wait_online(timeout=60)
        with Fleet(broker_url, base, store=store, chunk_size=chunk_size) as fleet:
            for index in range(kills):
                point = KILL_POINTS[index % len(KILL_POINTS)]
                points[point] = points.get(point, 0) + 1
                variant = model_variant(model, workdir, index, rng)
                if point.startswith("activate"):
                    hook = (
                        "before_switch"
                        if point.endswith("before_switch")
                        else "after_switch_before_commit"
                    )
                    agent.restart(env={"EDGETAILOR_AGENT_CRASH_AT": hook})
                    agent.wait_online(timeout=60)
                    old = active_sha()
                    manifest = msgspec.structs.replace(
                        fleet.offer(variant), target_device="fault-agent", sequence=index + 1
                    )  # addressed and numbered as host.deploy does; signed when published
                    job = fleet.commands.send(
                        "fault-agent",
                        DeployCmd(deploy_id=f"d{index}", model=manifest, chunk_size=chunk_size,
                                  health_runs=2, timeout_s=60),
                    ).command_id  # fmt: skip
                    agent.wait_exit(timeout=60)
                    agent.restart(env={})
                    agent.wait_online(timeout=60)
                    info = fleet.commands.wait(job, timeout=JOB_TIMEOUT_S)
                    code = f":{info.error_code}" if info.error_code else ""
                    outcome = ("ok" if info.state == "answered" else "error") + code
                    active_checks += 1
                    active_ok += int(active_sha() in (old, manifest.sha256))
                elif point == "report":
                    agent.restart(env={"EDGETAILOR_AGENT_CRASH_AT": "after_result_persisted"})
                    agent.wait_online(timeout=60)
                    fleet.wait_for_device("fault-agent", 60)
                    job = submit_benchmark(
                        fleet, "fault-agent", variant, runs=1, warmup_s=0.0, min_s=0.0,
                        timeout_s=60,
                    )  # fmt: skip
                    agent.wait_exit(timeout=60)
                    agent.restart(env={})
                    agent.wait_online(timeout=60)
                    outcome = _outcome(fleet, job, JOB_TIMEOUT_S)
                else:
                    published = fleet.chunks.chunks_published
                    fleet.wait_for_device("fault-agent", 60)
                    job = submit_benchmark(
                        fleet, "fault-agent", variant, runs=1, warmup_s=0.0, min_s=0.0,
                        timeout_s=60,
                    )  # fmt: skip
                    fraction = rng.uniform(0.05, 0.95) if point == "download" else 1.0
                    target = published + int(fraction * total)
                    _wait_until(
                        lambda t=target, j=job: (
                            fleet.chunks.chunks_published >= t or _final(fleet, j)
                        ),
                        30,
                    )
                    if point == "verify":
                        time.sleep(rng.uniform(0.0, 0.3))
                    agent.kill()
                    agent.start()
                    agent.wait_online(timeout=60)
                    outcome = _outcome(fleet, job, JOB_TIMEOUT_S)
                outcomes[outcome] = outcomes.get(outcome, 0) + 1
                invalid += invalid_store_entries(agent.data_dir / "store")
            time.sleep(3)  # several outbox re-send periods: a duplicate would show up now
            stored = fleet.commands.stored  # answers stored, per command (a second would count)
            for command_id, count in stored.items():
                deliveries[command_id] = count
            stored_results = sum(stored.values())
    finally:
        agent.terminate(timeout=10)
        store.close()
    return {
        "kills": kills,
        "kill_points": points,
        "outcomes": outcomes,
        "results_delivered_once": sum(1 for n in deliveries.values() if n == 1),
        "results_delivered_twice_or_more": sum(1 for n in deliveries.values() if n > 1),
        "results_stored": stored_results,
        "active_old_or_new": f"{active_ok}/{active_checks}",
        "invalid_stored_artifacts": len(invalid),
        "seconds": round(time.monotonic() - started, 1),
    }


# -- the run ---------------------------------------------------------------------------------------
def _wide_model(out_dir: Path) -> Path:
    """The multi-MB MLP of tests/e2e (~5 MB of float32 weights) as .tflite."""
    import litert_torch
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(64, 4096), nn.ReLU(), nn.Linear(4096, 256), nn.ReLU(),
        nn.Linear(256, 10),
    ).eval()  # fmt: skip
    path = out_dir / "wide_mlp.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return path


def render(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(title="edgetailor fault run")
    table.add_column("loop")
    table.add_column("tried", justify="right")
    table.add_column("outcome")
    tamper = report.get("tamper")
    if tamper:
        for name in ("artifact_flips", "chunk_flips", "manifest_flips"):
            row = tamper[name]
            table.add_row(
                name, str(row["tried"]),
                f"rejected {row['rejected']} {row['reasons']}, unchanged {row['unchanged']}, "
                f"accepted {row['accepted']}, store changed {row['store_changed']}",
            )  # fmt: skip
        refused = sum(1 for v in tamper["policy"].values() if v)
        table.add_row("named attacks", str(len(tamper["policy"])), f"refused {refused}")
    broker = report.get("broker")
    if broker:
        table.add_row(
            "broker SIGKILL", str(broker["transfers"]),
            f"{broker['outcomes']}, killed mid-transfer {broker['killed_mid_transfer']}, "
            f"invalid stored {broker['invalid_stored_artifacts']}, {broker['seconds']} s",
        )  # fmt: skip
    agent = report.get("agent")
    if agent:
        table.add_row(
            "agent SIGKILL", str(agent["kills"]),
            f"{agent['kill_points']} -> {agent['outcomes']}; delivered once "
            f"{agent['results_delivered_once']}, twice+ {agent['results_delivered_twice_or_more']}, "
            f"active old/new {agent['active_old_or_new']}, invalid stored "
            f"{agent['invalid_stored_artifacts']}, {agent['seconds']} s",
        )  # fmt: skip
    fuzz = report.get("fuzz")
    if fuzz:
        table.add_row(
            "fuzz (hypothesis)", str(fuzz["agent_inputs"] + fuzz["host_inputs"]),
            f"agent {fuzz['agent_inputs']} inputs / {fuzz['agent_tracebacks']} tracebacks, "
            f"host {fuzz['host_inputs']} inputs / {fuzz['host_tracebacks']} tracebacks",
        )  # fmt: skip
    return table


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    """Faults have no baseline: the goal is that none gets through."""
    rows: list[GoalRow] = []
    tamper = report.get("tamper")
    if tamper:
        for name in ("artifact_flips", "chunk_flips", "manifest_flips"):
            row = tamper[name]
            rows.append(
                GoalRow(
                    "faults",
                    f"{row['tried']} bit flips ({name.replace('_', ' ')})",
                    f"{row['accepted']} accepted, {row['store_changed']} store changes",
                    "0 accepted",
                    row["accepted"] == 0 and row["store_changed"] == 0,
                )
            )
        refused = sum(1 for v in tamper["policy"].values() if v)
        rows.append(
            GoalRow(
                "faults",
                f"{len(tamper['policy'])} named attacks",
                f"{refused} refused",
                "all refused",
                refused == len(tamper["policy"]),
            )
        )
    broker = report.get("broker")
    if broker:
        rows.append(
            GoalRow(
                "faults",
                f"Mosquitto SIGKILLed in {broker['transfers']} transfers",
                f"{broker['outcomes']}, {broker['invalid_stored_artifacts']} invalid stored",
                "all complete, 0 invalid",
                broker["outcomes"].get("ok", 0) == broker["transfers"]
                and broker["invalid_stored_artifacts"] == 0,
            )
        )
    agent = report.get("agent")
    if agent:
        rows.append(
            GoalRow(
                "faults",
                f"{agent['kills']} agent SIGKILLs",
                f"delivered once {agent['results_delivered_once']}, twice+ "
                f"{agent['results_delivered_twice_or_more']}, active old/new "
                f"{agent['active_old_or_new']}",
                "exactly once; active old or new",
                agent["results_delivered_twice_or_more"] == 0
                and agent["invalid_stored_artifacts"] == 0
                and _all_of(agent["active_old_or_new"]),
            )
        )
    fuzz = report.get("fuzz")
    if fuzz:
        rows.append(
            GoalRow(
                "faults",
                f"{fuzz['agent_inputs'] + fuzz['host_inputs']} fuzzed messages",
                f"{fuzz['agent_tracebacks'] + fuzz['host_tracebacks']} tracebacks",
                "0 tracebacks",
                fuzz["agent_tracebacks"] + fuzz["host_tracebacks"] == 0,
            )
        )
    return rows


def _all_of(fraction: str) -> bool:
    """ "8/8" -> True."""
    done, _, total = str(fraction).partition("/")
    return done == total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.faults", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--flips", type=int, default=1000)
    parser.add_argument("--transfers", type=int, default=20)
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--fuzz-examples", type=int, default=2000)
    parser.add_argument(
        "--broker", default="mqtt://127.0.0.1:1883", help="for agent kills and fuzz"
    )
    parser.add_argument("--skip", default="", help="comma list of: tamper,broker,agent,fuzz")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.CRITICAL)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    from rich.console import Console

    console = Console()
    report: dict[str, Any] = {"seed": args.seed, "started": time.time()}
    with tempfile.TemporaryDirectory(prefix="et-faults-") as tmp:
        workdir = Path(tmp)
        model = _wide_model(workdir)
        if "tamper" not in skip:
            console.print("tamper: bit flips and named attacks ...")
            # The first 200 KB stand for the artifact: verification cost grows with size, its path
            # does not, and 1,000 flips of all 5 MB would mostly measure disk writes.
            report["tamper"] = run_tamper(model.read_bytes()[:200_000], args.flips, args.seed)
        if "broker" not in skip:
            console.print(f"broker: {args.transfers} transfers with a SIGKILL each ...")
            (workdir / "broker").mkdir()
            report["broker"] = run_broker_kills(
                model, args.transfers, workdir / "broker", args.seed
            )
        if "agent" not in skip:
            console.print(f"agent: {args.kills} SIGKILLs ...")
            (workdir / "agent").mkdir()
            report["agent"] = run_agent_kills(
                model, args.kills, workdir / "agent", args.broker, args.seed
            )
        if "fuzz" not in skip:
            console.print(f"fuzz: {args.fuzz_examples} inputs per handler ...")
            report["fuzz"] = run_fuzz(args.fuzz_examples, args.broker, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    console.print(render(report))
    console.print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
