"""Result records carried in ``Response.data``; both sides convert with :func:`from_data`."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from shared.errors import ValidationError


class LatencyStats(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    mean: float
    std: float
    min: float
    p50: float
    p90: float
    p95: float
    p99: float
    max: float


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


class BenchmarkResult(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    job_id: str
    model_sha256: str
    backend: str
    runtime: str  # module and version that actually ran the model
    threads: int | None
    size_bytes: int
    load_ms: float
    warmup_runs: int
    runs: int
    latency_ms: LatencyStats
    peak_rss_mb: float  # peak resident memory of the benchmark worker process
    rss_growth_mb: float  # worker RSS after the timed runs minus before loading the model
    metric: str | None = None  # "accuracy" (labels shipped) or "agreement" (reference outputs)
    metric_value: float | None = None
    accuracy: float | None = None
    eval_samples: int = 0
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


T = TypeVar("T")


def from_data(data: Any, cls: type[T]) -> T:
    try:
        return msgspec.convert(data, cls)
    except msgspec.ValidationError as exc:
        raise ValidationError(f"invalid {cls.__name__}: {exc}") from exc


def to_data(obj: msgspec.Struct) -> dict[str, Any]:
    return msgspec.to_builtins(obj)
