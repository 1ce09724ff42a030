"""Figures: the names constraints and objectives may use (the FIGURES registry)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from host.select.rows import (
    _MIB,
    ResultRow,
)
from shared.registry import Registry


@dataclass(frozen=True)
class Figure:
    """A number read off a row, with its unit and which direction is better."""

    name: str
    read: Callable[[ResultRow], float | None]
    unit: str
    better: Literal["lower", "higher"]
    description: str
    interval: Callable[[ResultRow], tuple[float, float] | None] | None = None

    def format(self, value: float | None) -> str:
        return format_value(value, self.unit)


def format_value(value: float | None, unit: str = "") -> str:
    if value is None or not math.isfinite(value):
        return "n/a"
    magnitude = abs(value)
    if magnitude == 0:
        text = "0"
    elif magnitude >= 100:
        text = f"{value:.0f}"
    elif magnitude >= 1:
        text = f"{value:.2f}" if magnitude < 10 else f"{value:.1f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}" if unit else text


def _latency(key: str) -> Callable[[ResultRow], float | None]:
    def read(row: ResultRow) -> float | None:
        return row.latency_ms.get(key)

    return read


def _named_metric(name: str) -> Callable[[ResultRow], float | None]:
    # "accuracy" must not silently read an agreement figure: they measure different things.
    def read(row: ResultRow) -> float | None:
        return row.metric_value if row.metric == name else None

    return read


def _named_metric_drop(name: str) -> Callable[[ResultRow], float | None]:
    def read(row: ResultRow) -> float | None:
        return row.metric_drop if row.metric == name else None

    return read


def _named_interval(
    name: str | None, drop: bool
) -> Callable[[ResultRow], tuple[float, float] | None]:
    def read(row: ResultRow) -> tuple[float, float] | None:
        if name is not None and row.metric != name:
            return None
        return row.drop_interval if drop else row.metric_interval

    return read


FIGURES: Registry[str, Figure] = Registry("figure")


def _add_figure(
    name: str,
    read: Callable[[ResultRow], float | None],
    unit: str,
    better: Literal["lower", "higher"],
    description: str,
    interval: Callable[[ResultRow], tuple[float, float] | None] | None = None,
) -> None:
    FIGURES.add(name, Figure(name, read, unit, better, description, interval))


for _key in ("mean", "p50", "p90", "p95", "p99", "max"):
    _add_figure(f"latency_{_key}_ms", _latency(_key), "ms", "lower", f"{_key} latency in ms")
_add_figure("peak_rss_mb", lambda r: r.peak_rss_mb, "MB", "lower", "peak worker RSS in MiB")
_add_figure("size_mb", lambda r: r.size_bytes / _MIB, "MB", "lower", "artifact size in MiB")
_add_figure("size_bytes", lambda r: float(r.size_bytes), "B", "lower", "artifact size in bytes")
_add_figure(
    "metric",
    lambda r: r.metric_value,
    "",
    "higher",
    "the row's metric, whatever it is",
    _named_interval(None, drop=False),
)
_add_figure(
    "metric_drop",
    lambda r: r.metric_drop,
    "",
    "lower",
    "baseline metric minus metric",
    _named_interval(None, drop=True),
)
for _name in ("accuracy", "agreement", "cosine", "r2"):
    _add_figure(
        _name,
        _named_metric(_name),
        "",
        "higher",
        f"{_name} (rows measuring {_name})",
        _named_interval(_name, drop=False),
    )
    _add_figure(
        f"{_name}_drop",
        _named_metric_drop(_name),
        "",
        "lower",
        f"baseline {_name} minus {_name}",
        _named_interval(_name, drop=True),
    )


def figure_value(row: ResultRow, name: str) -> float | None:
    """The named figure of a row, or None where the row does not have it (or it is NaN)."""
    value = FIGURES.get(name).read(row)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def figure_interval(row: ResultRow, name: str) -> tuple[float, float] | None:
    """The 95% interval of the named figure, where the row has one (quality figures only)."""
    read = FIGURES.get(name).interval
    return None if read is None else read(row)
