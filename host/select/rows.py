"""One row per (candidate, device): what a campaign measured, and how figures are read off it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from shared.errors import ConfigError
from shared.results import BenchmarkResult

RowStatus = Literal["ok", "failed"]
Verdict = Literal["met", "missed", "undecided"]
_MIB = 1024 * 1024


@dataclass(frozen=True, eq=True)
class ResultRow:
    """One candidate measured on one device (or a failure to measure it)."""

    candidate: str
    device: str
    recipe: str
    format: str
    precision: str
    size_bytes: int
    latency_ms: dict[str, float]
    peak_rss_mb: float
    metric: str
    metric_value: float
    baseline_metric: float | None = None
    status: RowStatus = "ok"
    error: str | None = None
    # 95% intervals of the metric and of its drop from the baseline (paired where possible).
    metric_interval: tuple[float, float] | None = None
    drop_interval: tuple[float, float] | None = None
    eval_samples: int = 0
    warnings: tuple[str, ...] = ()
    # The variant: ``candidate`` is the unit selection weighs, ``artifact`` the candidate whose file
    # it runs (the same id unless threads were swept), on the backend ``runtime`` (tflite, onnx)
    # with ``threads`` threads (None: the agent's default).
    artifact: str = ""
    runtime: str = ""
    threads: int | None = None

    # Rows carry a dict, so the generated hash would fail; identity is (candidate, device).
    __hash__ = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.status not in ("ok", "failed"):
            raise ConfigError(
                f"result row {self.candidate!r} on {self.device!r} has status {self.status!r}; "
                "use 'ok' or 'failed'"
            )
        if not self.candidate or not self.device:
            raise ConfigError("a result row needs a non-empty candidate id and device id")

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def metric_drop(self) -> float | None:
        if self.baseline_metric is None:
            return None
        return self.baseline_metric - self.metric_value

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "device": self.device,
            "recipe": self.recipe,
            "format": self.format,
            "precision": self.precision,
            "size_bytes": self.size_bytes,
            "latency_ms": {k: _finite_or_none(v) for k, v in self.latency_ms.items()},
            "peak_rss_mb": _finite_or_none(self.peak_rss_mb),
            "metric": self.metric,
            "metric_value": _finite_or_none(self.metric_value),
            "baseline_metric": _finite_or_none(self.baseline_metric),
            "status": self.status,
            "error": self.error,
            "metric_interval": _interval_or_none(self.metric_interval),
            "drop_interval": _interval_or_none(self.drop_interval),
            "eval_samples": self.eval_samples,
            "warnings": list(self.warnings),
            "artifact": self.artifact,
            "runtime": self.runtime,
            "threads": self.threads,
        }

    @property
    def artifact_id(self) -> str:
        """The candidate whose file this variant runs."""
        return self.artifact or self.candidate

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResultRow:
        """Inverse of :meth:`to_dict` (``None`` figures come back as NaN)."""
        try:
            return cls(
                candidate=str(data["candidate"]),
                device=str(data["device"]),
                recipe=str(data.get("recipe", "")),
                format=str(data.get("format", "")),
                precision=str(data.get("precision", "")),
                size_bytes=int(data.get("size_bytes") or 0),
                latency_ms={
                    str(k): _nan_if_none(v) for k, v in (data.get("latency_ms") or {}).items()
                },
                peak_rss_mb=_nan_if_none(data.get("peak_rss_mb")),
                metric=str(data.get("metric") or "metric"),
                metric_value=_nan_if_none(data.get("metric_value")),
                baseline_metric=(
                    None if data.get("baseline_metric") is None else float(data["baseline_metric"])
                ),
                status=data.get("status", "ok"),
                error=data.get("error"),
                metric_interval=_read_interval(data.get("metric_interval")),
                drop_interval=_read_interval(data.get("drop_interval")),
                eval_samples=int(data.get("eval_samples") or 0),
                warnings=tuple(str(w) for w in data.get("warnings") or ()),
                artifact=str(data.get("artifact") or ""),
                runtime=str(data.get("runtime") or ""),
                threads=None if data.get("threads") is None else int(data["threads"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"cannot read result row {data!r}: {exc}") from exc

    @classmethod
    def from_benchmark(
        cls,
        result: BenchmarkResult,
        *,
        candidate: str,
        device: str,
        recipe: str,
        format: str,
        precision: str,
        baseline_metric: float | None = None,
        drop_interval: tuple[float, float] | None = None,
    ) -> ResultRow:
        """Build a row from the agent's benchmark record (shared.results.BenchmarkResult).

        Without ``drop_interval`` the drop's interval is the metric's, against a fixed baseline.
        """
        lat = result.latency_ms
        interval = _read_interval(result.metric_interval)
        if drop_interval is None and interval is not None and baseline_metric is not None:
            drop_interval = (baseline_metric - interval[1], baseline_metric - interval[0])
        return cls(
            candidate=candidate,
            device=device,
            recipe=recipe,
            format=format,
            precision=precision,
            size_bytes=result.size_bytes,
            latency_ms={
                "mean": lat.mean,
                "std": lat.std,
                "min": lat.min,
                "p50": lat.p50,
                "p90": lat.p90,
                "p95": lat.p95,
                "p99": lat.p99,
                "max": lat.max,
            },
            peak_rss_mb=result.peak_rss_mb,
            metric=result.metric or "metric",
            metric_value=math.nan if result.metric_value is None else result.metric_value,
            baseline_metric=baseline_metric,
            metric_interval=interval,
            drop_interval=drop_interval,
            eval_samples=result.eval_samples,
            warnings=tuple(result.eval_warnings),
            runtime=result.backend,
            threads=result.threads,
        )

    @classmethod
    def failed(
        cls,
        *,
        candidate: str,
        device: str,
        error: str,
        recipe: str = "",
        format: str = "",
        precision: str = "",
        size_bytes: int = 0,
        metric: str = "metric",
    ) -> ResultRow:
        """A row for a candidate that could not be measured on a device."""
        return cls(
            candidate=candidate,
            device=device,
            recipe=recipe,
            format=format,
            precision=precision,
            size_bytes=size_bytes,
            latency_ms={},
            peak_rss_mb=math.nan,
            metric=metric,
            metric_value=math.nan,
            status="failed",
            error=error,
        )


def _finite_or_none(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _nan_if_none(value: Any) -> float:
    return math.nan if value is None else float(value)


def _read_interval(value: Any) -> tuple[float, float] | None:
    if value is None:
        return None
    low, high = (float(v) if v is not None else math.nan for v in value)
    if not (math.isfinite(low) and math.isfinite(high)):
        return None
    return (min(low, high), max(low, high))


def _interval_or_none(value: tuple[float, float] | None) -> list[float] | None:
    return None if value is None else [float(value[0]), float(value[1])]
