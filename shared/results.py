"""Result records carried in ``Response.data``; both sides convert with :func:`from_data`."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from typing import Annotated, Any, TypeVar

import msgspec

from shared.errors import IntegrityError, ValidationError
from shared.manifest import Sha256
from shared.messages import (
    OUTPUTS_LIMIT_BYTES,
    OUTPUTS_MAX_PARTS,
    OUTPUTS_PART_BYTES,
    OutputsPart,
)

# Per-sample scores of at most this many samples travel with a result (shared.scoring).
MAX_SAMPLE_SCORES = 10_000


class LatencyStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float
    # How far the figures can be trusted (shared.latency): coefficient of variation and 95%
    # order-statistic intervals on p50 and p90; None where the samples are too few.
    cv: float | None = None
    p50_ci: Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)] | None = None
    p90_ci: Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)] | None = None


class TransferStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """How an artifact reached the device for this job."""

    sha256: str
    already_stored: bool
    chunks_total: int = 0
    chunks_written: int = 0
    duplicate_chunks: int = 0
    rejected_chunks: int = 0
    requests_sent: int = 0
    seconds: float = 0.0


class OutputsRef(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The raw eval outputs a job sent back in ``parts`` OutputsPart messages: an npz with
    ``out0``, ``out1``, ... (one array per model output, samples along axis 0, float32)."""

    sha256: Sha256
    size_bytes: Annotated[int, msgspec.Meta(ge=0, le=OUTPUTS_LIMIT_BYTES)]
    parts: Annotated[int, msgspec.Meta(ge=1, le=OUTPUTS_MAX_PARTS)]


class BenchmarkResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    job_id: str
    model_sha256: str
    backend: str
    runtime: str  # module and version that actually ran the model
    threads: int | None
    size_bytes: int
    load_ms: float  # creating the interpreter/session and allocating it; the import is apart
    warmup_runs: int
    runs: int
    latency_ms: LatencyStats
    peak_rss_mb: float  # peak resident memory of the benchmark worker process
    rss_growth_mb: float  # worker RSS after the timed runs minus before loading the model
    # shared.scoring.metric_for(task, labels shipped): accuracy, agreement, cosine or r2
    metric: str | None = None
    metric_value: float | None = None
    accuracy: float | None = None
    eval_samples: int = 0
    task: str | None = None
    metric_interval: Annotated[list[float], msgspec.Meta(min_length=2, max_length=2)] | None = None
    interval_method: str | None = None  # "wilson" or "bootstrap"
    # The metric of each eval sample (0/1 for accuracy and agreement): paired intervals on the host.
    sample_scores: Annotated[list[float], msgspec.Meta(max_length=MAX_SAMPLE_SCORES)] | None = None
    eval_warnings: Annotated[
        list[Annotated[str, msgspec.Meta(max_length=1000)]], msgspec.Meta(max_length=16)
    ] = []
    outputs: OutputsRef | None = None
    import_ms: float | None = None  # importing the runtime's module in the fresh worker
    # invoke()-only latency (inputs set once, outputs not read) beside ``latency_ms``, which is
    # end to end: set inputs, invoke, read outputs. None where the backend cannot split them.
    invoke_ms: LatencyStats | None = None
    board: dict[str, Any] = {}  # temperature, throttling, frequency before/after, cpu affinity
    transfers: list[TransferStats] = []


class HealthReport(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    passed: bool
    checks: dict[str, bool] = {}  # loads, finite_outputs, latency_within_budget, metric_at_least
    latency_p90_ms: float | None = None
    metric: str | None = None
    metric_value: float | None = None
    detail: str = ""


class DeployResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Final answer to cmd.deploy and cmd.rollback."""

    deploy_id: str | None
    outcome: str  # "committed" | "rolled_back" | "failed" | "restored"
    active_sha256: str | None  # what DATA_DIR/active holds now
    previous_sha256: str | None
    health: HealthReport | None = None
    detail: str = ""


class CancelResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer to cmd.cancel: whether the named job was queued or running (it then ends with the
    error code ``cancelled``)."""

    job_id: str
    cancelled: bool


class PingResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer to cmd.ping."""

    agent_version: str
    uptime_s: float
    running: str | None
    queued: int


class RotateKeyResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Answer to cmd.rotate_key: the host key the device pins now, and the one it replaced."""

    key_id: str
    previous_key_id: str | None = None


def split_outputs(job_id: str, data: bytes) -> tuple[OutputsRef, list[OutputsPart]]:
    """The parts an outputs file travels in, and the reference the result carries."""
    if len(data) > OUTPUTS_LIMIT_BYTES:
        raise ValidationError(
            f"the eval outputs are {len(data) / 2**20:.1f} MiB, over the "
            f"{OUTPUTS_LIMIT_BYTES / 2**20:.0f} MiB that may travel back; ship fewer eval samples"
        )
    digest = hashlib.sha256(data).hexdigest()
    pieces = [
        data[start : start + OUTPUTS_PART_BYTES]
        for start in range(0, max(len(data), 1), OUTPUTS_PART_BYTES)
    ]
    parts = [
        OutputsPart(
            job_id=job_id,
            sha256=digest,
            index=index,
            count=len(pieces),
            data=base64.b64encode(piece).decode("ascii"),
        )
        for index, piece in enumerate(pieces)
    ]
    return OutputsRef(sha256=digest, size_bytes=len(data), parts=len(pieces)), parts


def join_outputs(ref: OutputsRef, parts: Iterable[OutputsPart]) -> bytes:
    """The outputs file from its parts (any order, duplicates allowed), checked against ``ref``."""
    pieces: dict[int, bytes] = {}
    for part in parts:
        if part.sha256 != ref.sha256 or part.count != ref.parts:
            raise IntegrityError(f"an outputs part of {part.sha256[:12]} belongs to another file")
        try:
            pieces[part.index] = base64.b64decode(part.data, validate=True)
        except ValueError as exc:
            raise IntegrityError(f"outputs part {part.index} is not base64: {exc}") from exc
    missing = [i for i in range(ref.parts) if i not in pieces]
    if missing:
        raise IntegrityError(f"outputs parts {missing[:8]} of {ref.parts} are missing")
    data = b"".join(pieces[i] for i in range(ref.parts))
    if len(data) != ref.size_bytes or hashlib.sha256(data).hexdigest() != ref.sha256:
        raise IntegrityError("the joined outputs do not match their sha256; they are discarded")
    return data


T = TypeVar("T")


def from_data(data: Any, cls: type[T]) -> T:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid {cls.__name__}: {exc}") from exc


def to_data(obj: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(obj)
