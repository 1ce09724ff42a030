"""The versioned message envelope and every message body, with strict validation.

Every control message on the broker is a JSON envelope::

    {"schema": "cmd.benchmark", "v": 1, "msg_id": "...", "corr_id": null, "ts": 1.7e9,
     "device_id": "pi-01", "body": {...},
     "seq": 42, "exp": 1.7e9, "key": "<Ed25519 public key>", "sig": "<signature>"}

``schema`` names the body type (see ``SCHEMAS``); ``v`` is the protocol major version. Unknown
fields are rejected, strings and lists are bounded, and the whole message is bounded by
``MAX_MESSAGE_BYTES`` before it is parsed. Artifact chunks are not envelopes: see shared.transfer.

The last four fields authenticate the envelope (see shared.signing): ``key`` is the signer's
Ed25519 public key (raw, base64), ``sig`` its signature over :func:`signed_bytes` (every other field,
the body exactly as it appears on the wire), ``exp`` when the message stops being valid, and
``seq`` its place in the signer's sequence for this device, which the receiver's replay window
checks. The host signs every command; an agent signs everything it sends with its own device key.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Annotated, Any, Literal, Protocol

import msgspec

from shared import PROTOCOL_VERSION
from shared.errors import MessageTooLargeError, UnsupportedVersionError, ValidationError
from shared.manifest import ArtifactManifest, Sha256, ShortStr
from shared.registry import Registry

MAX_MESSAGE_BYTES = 256 * 1024
MSG_ID_PATTERN = re.compile(r"^[A-Za-z0-9_.:-]{1,64}\Z")
MsgId = Annotated[str, msgspec.Meta(pattern=MSG_ID_PATTERN.pattern)]
Text = Annotated[str, msgspec.Meta(max_length=4096)]
# An Ed25519 public key (32 bytes) and signature (64 bytes), standard base64 with padding.
PublicKeyB64 = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{43}=\Z")]
SignatureB64 = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9+/]{86}==\Z")]
Sequence = Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]
# How long a signed message stays valid unless the signer says otherwise. A command that waits
# longer (its device offline) is signed again, with a new expiry and sequence, when it is re-sent.
DEFAULT_TTL_S = 3600.0
# Domain separation: an envelope signature can never be mistaken for a manifest signature.
SIGNING_CONTEXT = "edgetailor/envelope/v1"


class Body(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Base of every message body."""


# -- device -> host ----------------------------------------------------------------------------
class RuntimeInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: ShortStr  # backend name, e.g. "tflite"
    module: ShortStr  # importable module that provides it, e.g. "ai_edge_litert"
    version: ShortStr
    formats: Annotated[list[ShortStr], msgspec.Meta(max_length=8)]


class Birth(Body, frozen=True):
    agent_version: ShortStr
    arch: ShortStr
    cpu_model: ShortStr
    cores: int
    ram_mb: float
    os: ShortStr
    python: ShortStr
    runtimes: Annotated[list[RuntimeInfo], msgspec.Meta(max_length=16)] = []
    delegates: Annotated[list[ShortStr], msgspec.Meta(max_length=16)] = []
    tags: dict[ShortStr, ShortStr] = {}
    active_sha256: Sha256 | None = None
    # The host key this agent has pinned (shared.signing.key_id_of), None before its first
    # command: the host signs with the key the device trusts, and sends a signed rotation to a
    # device that still pins a previous key.
    host_key_id: ShortStr | None = None
    # The CPU's instruction-set extensions that inference kernels use (avx2, avx512_vnni, asimddp,
    # i8mm, ...), and the CPUs' worth of time a cgroup quota leaves the agent (None: no quota).
    cpu_flags: Annotated[list[ShortStr], msgspec.Meta(max_length=64)] = []
    cpu_quota: Annotated[float, msgspec.Meta(gt=0, le=4096)] | None = None


class ServingLatency(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean: float
    p50: float
    p90: float
    p99: float
    max: float


class ServingStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The local inference endpoint since the previous telemetry (``interval_s``) and in total.

    ``latency_ms`` is the time the endpoint spent on each answered request (decode the input, run
    the active model, encode the output), over the ``requests - errors`` answered in the interval.
    """

    model_sha256: Sha256 | None = None
    runtime: ShortStr | None = None
    interval_s: float
    requests: int
    errors: int
    requests_total: int
    errors_total: int
    latency_ms: ServingLatency | None = None


class Telemetry(Body, frozen=True):
    cpu_percent: float
    mem_used_mb: float
    mem_total_mb: float
    agent_rss_mb: float
    temperature_c: float | None = None
    throttled: bool | None = None
    cpu_freq_mhz: float | None = None
    load_avg_1m: float | None = None
    active_sha256: Sha256 | None = None
    disk_free_mb: float | None = None  # on the filesystem of the data dir
    serving: ServingStats | None = None  # only while the agent runs with --serve


class ChunkRequest(Body, frozen=True):
    """The device asks for these chunks of an artifact; they arrive on topics.artifact_chunks."""

    sha256: Sha256
    chunk_size: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)]
    indices: Annotated[list[Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=256)]


# Raw eval outputs a board sends back for a metric the host computes: at most 8 MiB, in parts of
# 64 KiB (88 KB once base64 and the envelope are added, below AWS IoT's 128 KB payload cap).
OUTPUTS_LIMIT_BYTES = 8 * 1024 * 1024
OUTPUTS_PART_BYTES = 64 * 1024
OUTPUTS_MAX_PARTS = OUTPUTS_LIMIT_BYTES // OUTPUTS_PART_BYTES


class OutputsPart(Body, frozen=True):
    """One part of the raw eval outputs of a benchmark job (an npz file, base64 in ``data``).

    Parts are final messages like results: kept in the agent's outbox until the host acknowledges
    each one; the result names the whole file by sha256 (shared.results.OutputsRef).
    """

    job_id: MsgId
    sha256: Sha256
    index: Annotated[int, msgspec.Meta(ge=0, lt=OUTPUTS_MAX_PARTS)]
    count: Annotated[int, msgspec.Meta(ge=1, le=OUTPUTS_MAX_PARTS)]
    data: Annotated[str, msgspec.Meta(max_length=(OUTPUTS_PART_BYTES * 4) // 3 + 4)]


class ErrorInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    code: ShortStr  # machine-readable, e.g. "hash_mismatch", "timeout", "worker_crashed"
    message: Text


class Response(Body, frozen=True):
    """Reply to a command; ``corr_id`` of the envelope is the command's ``msg_id``."""

    status: Literal["ok", "error", "progress"]
    data: dict[str, Any] | None = None
    error: ErrorInfo | None = None


# -- host -> device ----------------------------------------------------------------------------
class BenchmarkCmd(Body, frozen=True):
    job_id: MsgId
    model: ArtifactManifest
    eval_data: ArtifactManifest | None = None
    chunk_size: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 128 * 1024
    threads: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    warmup_runs: Annotated[int, msgspec.Meta(ge=1, le=10_000)] = 1
    warmup_s: Annotated[float, msgspec.Meta(ge=0, le=600)] = 0.5
    runs: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 50
    min_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 1.0
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 300.0
    eval_limit: Annotated[int, msgspec.Meta(ge=0)] | None = None
    # The eval file names its task; this overrides it (files written before tasks were recorded).
    task: Literal["classification", "embedding", "regression"] | None = None
    # Send the raw outputs of the eval set back (OutputsPart messages) for a host-side metric.
    return_outputs: bool = False


class DeployCmd(Body, frozen=True, omit_defaults=True):
    """Make ``model`` the device's active model: fetch, health-check, switch atomically, commit or roll back.

    The health check loads the model in the isolated worker, runs the eval inputs, and fails on NaN/inf
    outputs, a p90 latency above ``latency_budget_ms``, or a metric below ``min_metric``.
    """

    deploy_id: MsgId
    model: ArtifactManifest
    eval_data: ArtifactManifest | None = None
    chunk_size: Annotated[int, msgspec.Meta(ge=1024, le=1024 * 1024)] = 128 * 1024
    threads: Annotated[int, msgspec.Meta(ge=1, le=256)] | None = None
    # The backend the board should run the model on (e.g. "tflite", "onnx"); with ``threads`` it is
    # recorded in the release. Omitted when None, so agents that predate it still accept the command.
    runtime: ShortStr | None = None
    latency_budget_ms: Annotated[float, msgspec.Meta(gt=0)] | None = None
    min_metric: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    health_runs: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 20
    timeout_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)] = 300.0


class RollbackCmd(Body, frozen=True):
    """Restore the previously active model (the one the last deploy replaced)."""

    deploy_id: MsgId | None = None
    reason: Text = ""


class AckCmd(Body, frozen=True):
    """The host has stored these responses (by their envelope msg_id); the device may forget them.

    ``unknown`` lists responses to commands the host has no record of (forged, or from a database
    that is gone): the device drops them too, instead of re-sending them forever.
    """

    msg_ids: Annotated[list[MsgId], msgspec.Meta(max_length=1024)]
    unknown: Annotated[list[MsgId], msgspec.Meta(max_length=1024)] = []


class RotateKeyCmd(Body, frozen=True):
    """Trust ``key`` (an Ed25519 public key) instead of the key that signed this command.

    Signed with the host's current (pinned) key, like TUF's root rotation: the old key vouches for
    the new one, so a device that pinned the old key on first use follows the rotation, and a key
    nobody vouched for stays refused.
    """

    key: PublicKeyB64
    reason: Text = ""


class CancelCmd(Body, frozen=True):
    job_id: MsgId


class PingCmd(Body, frozen=True):
    pass


# -- envelope ----------------------------------------------------------------------------------
SCHEMAS: Registry[str, type[Body]] = Registry("message schema")
SCHEMAS.add("birth", Birth)
SCHEMAS.add("telemetry", Telemetry)
SCHEMAS.add("xfer.request", ChunkRequest)
SCHEMAS.add("resp", Response)
SCHEMAS.add("resp.outputs", OutputsPart)
SCHEMAS.add("cmd.benchmark", BenchmarkCmd)
SCHEMAS.add("cmd.deploy", DeployCmd)
SCHEMAS.add("cmd.rollback", RollbackCmd)
SCHEMAS.add("cmd.ack", AckCmd)
SCHEMAS.add("cmd.cancel", CancelCmd)
SCHEMAS.add("cmd.ping", PingCmd)
SCHEMAS.add("cmd.rotate_key", RotateKeyCmd)


class Envelope(
    msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True, omit_defaults=True
):
    schema: ShortStr
    v: int
    msg_id: MsgId
    ts: float
    corr_id: MsgId | None = None
    device_id: ShortStr | None = None
    body: msgspec.Raw = msgspec.Raw(b"{}")
    # Authentication (module docstring); absent on an unsigned message.
    seq: Sequence | None = None
    exp: float | None = None
    key: PublicKeyB64 | None = None
    sig: SignatureB64 | None = None


class Auth(msgspec.Struct, frozen=True, kw_only=True):
    """The signature of a decoded envelope, and the exact bytes it covers (shared.signing checks
    it against a pinned key)."""

    key: str
    sig: str
    exp: float
    seq: int | None
    signed: bytes


class Message(msgspec.Struct, frozen=True, kw_only=True):
    """A decoded envelope with its typed body; ``auth`` is None when it was not signed."""

    schema: str
    msg_id: str
    ts: float
    body: Body
    corr_id: str | None = None
    device_id: str | None = None
    auth: Auth | None = None


class EnvelopeSigner(Protocol):
    """What :func:`encode` needs to sign (shared.signing.Signer is the implementation)."""

    @property
    def key(self) -> str:
        """The signer's Ed25519 public key, raw, base64."""
        ...

    def sign(self, data: bytes) -> str:
        """The base64 Ed25519 signature of ``data``."""
        ...


def signed_bytes(
    *,
    schema: str,
    v: int,
    msg_id: str,
    ts: float,
    corr_id: str | None,
    device_id: str | None,
    seq: int | None,
    exp: float,
    key: str,
    body: bytes,
) -> bytes:
    """The bytes an envelope signature covers: a context string and every field but ``sig`` as a
    JSON array, a newline, then the body exactly as it appears on the wire (never re-encoded)."""
    head = msgspec.json.encode(
        [SIGNING_CONTEXT, schema, v, msg_id, ts, corr_id, device_id, seq, exp, key]
    )
    return head + b"\n" + body


def new_msg_id() -> str:
    return uuid.uuid4().hex


def schema_of(body: Body) -> str:
    for name, cls in SCHEMAS.items():
        if type(body) is cls:
            return name
    raise ValidationError(f"{type(body).__name__} is not a registered message body")


def encode(
    body: Body,
    *,
    device_id: str | None = None,
    corr_id: str | None = None,
    msg_id: str | None = None,
    signer: EnvelopeSigner | None = None,
    seq: int | None = None,
    ttl_s: float = DEFAULT_TTL_S,
    now: float | None = None,
) -> bytes:
    """One envelope, signed by ``signer`` (valid ``ttl_s`` from now, with sequence ``seq``) when
    one is given; raises MessageTooLargeError past MAX_MESSAGE_BYTES."""
    ts = time.time() if now is None else now
    schema = schema_of(body)
    raw = msgspec.json.encode(body)
    msg_id = msg_id or new_msg_id()
    exp = key = sig = None
    if signer is not None:
        if ttl_s <= 0:
            raise ValidationError(f"a signed message needs a positive lifetime, not {ttl_s!r} s")
        exp, key = ts + ttl_s, signer.key
        sig = signer.sign(
            signed_bytes(
                schema=schema, v=PROTOCOL_VERSION, msg_id=msg_id, ts=ts, corr_id=corr_id,
                device_id=device_id, seq=seq, exp=exp, key=key, body=raw,
            )
        )  # fmt: skip
    elif seq is not None:
        raise ValidationError("a sequence number only means something on a signed message")
    envelope = Envelope(
        schema=schema, v=PROTOCOL_VERSION, msg_id=msg_id, ts=ts, corr_id=corr_id,
        device_id=device_id, body=msgspec.Raw(raw), seq=seq, exp=exp, key=key, sig=sig,
    )  # fmt: skip
    data = msgspec.json.encode(envelope)
    if len(data) > MAX_MESSAGE_BYTES:
        raise MessageTooLargeError(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    return data


def peek_ids(data: bytes) -> tuple[str | None, str | None]:
    """Best-effort (schema, msg_id) of a message that failed validation, to address an error reply."""
    if len(data) > MAX_MESSAGE_BYTES:
        return None, None
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    schema, msg_id = raw.get("schema"), raw.get("msg_id")
    schema = schema if isinstance(schema, str) and len(schema) <= 128 else None
    msg_id = msg_id if isinstance(msg_id, str) and MSG_ID_PATTERN.match(msg_id) else None
    return schema, msg_id


def decode(data: bytes, *, max_bytes: int = MAX_MESSAGE_BYTES) -> Message:
    """Validate and decode one envelope; raises a ValidationError subclass on anything wrong."""
    if len(data) > max_bytes:
        raise MessageTooLargeError(f"message of {len(data)} bytes exceeds the limit of {max_bytes}")
    try:
        env = msgspec.json.decode(data, type=Envelope)
    # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a string.
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"malformed envelope: {exc}") from exc
    if env.v != PROTOCOL_VERSION:
        raise UnsupportedVersionError(
            f"protocol version {env.v} is not supported (this side speaks {PROTOCOL_VERSION})"
        )
    if env.schema not in SCHEMAS:
        raise ValidationError(f"unknown message schema {env.schema!r}")
    try:
        body = msgspec.json.decode(env.body, type=SCHEMAS.get(env.schema))
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid {env.schema} body: {exc}") from exc
    return Message(
        schema=env.schema,
        msg_id=env.msg_id,
        ts=env.ts,
        corr_id=env.corr_id,
        device_id=env.device_id,
        body=body,
        auth=_auth_of(env),
    )


def _auth_of(env: Envelope) -> Auth | None:
    if env.sig is None:
        if env.key is not None or env.exp is not None or env.seq is not None:
            raise ValidationError("an envelope with key, exp or seq must carry its signature")
        return None
    if env.key is None or env.exp is None:
        raise ValidationError("a signed envelope must name its key and its expiry")
    signed = signed_bytes(
        schema=env.schema, v=env.v, msg_id=env.msg_id, ts=env.ts, corr_id=env.corr_id,
        device_id=env.device_id, seq=env.seq, exp=env.exp, key=env.key, body=bytes(env.body),
    )  # fmt: skip
    return Auth(key=env.key, sig=env.sig, exp=env.exp, seq=env.seq, signed=signed)
