"""Objectives (the OBJECTIVES registry): which feasible row wins, and the figures that break ties;
the Pareto front (metric up, p90 latency down, peak memory down)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from host.select.figures import (
    FIGURES,
    figure_value,
)
from host.select.rows import (
    ResultRow,
)
from shared.errors import ConfigError
from shared.registry import Registry


@dataclass(frozen=True)
class ObjectiveSpec:
    """What an objective optimizes first, and the order of figures that break its ties."""

    name: str
    primary: str
    tie_breaks: tuple[str, ...]
    phrase: str  # "highest metric" -> used in reasons


OBJECTIVES: Registry[str, ObjectiveSpec] = Registry("objective")
OBJECTIVES.add(
    "max_metric",
    ObjectiveSpec("max_metric", "metric", ("latency_p90_ms", "peak_rss_mb", "size_bytes"), "best"),
)
OBJECTIVES.add(
    "min_latency",
    ObjectiveSpec(
        "min_latency", "latency_p90_ms", ("metric", "peak_rss_mb", "size_bytes"), "lowest"
    ),
)
OBJECTIVES.add(
    "min_size",
    ObjectiveSpec(
        "min_size", "size_bytes", ("metric", "latency_p90_ms", "peak_rss_mb"), "smallest"
    ),
)
OBJECTIVES.add(
    "min_memory",
    ObjectiveSpec(
        "min_memory", "peak_rss_mb", ("metric", "latency_p90_ms", "size_bytes"), "smallest"
    ),
)


@dataclass(frozen=True)
class Objective:
    """Which feasible row wins.

    ``epsilon`` is in the primary figure's units: rows that close to the best count as tied and are
    ranked by the tie-breaks alone.
    """

    name: str = "max_metric"
    epsilon: float = 0.0

    def __post_init__(self) -> None:
        if self.name not in OBJECTIVES:
            raise ConfigError(
                f"unknown objective {self.name!r}; use one of: {', '.join(sorted(OBJECTIVES))}"
            )
        if not math.isfinite(self.epsilon) or self.epsilon < 0:
            raise ConfigError(f"objective epsilon must be a finite number >= 0, got {self.epsilon}")

    @classmethod
    def parse(cls, text: str | Objective | None, epsilon: float = 0.0) -> Objective:
        if text is None:
            return cls(epsilon=epsilon)
        if isinstance(text, Objective):
            return text
        return cls(text.strip(), epsilon)

    @property
    def spec(self) -> ObjectiveSpec:
        return OBJECTIVES.get(self.name)

    def oriented(self, row: ResultRow, name: str) -> float:
        """The figure turned so that smaller is always better; missing figures rank last."""
        value = figure_value(row, name)
        if value is None:
            return math.inf
        return -value if FIGURES.get(name).better == "higher" else value

    def rank(self, rows: Sequence[ResultRow]) -> tuple[list[ResultRow], list[ResultRow]]:
        """(rows best first, the rows tied with the best on the primary figure)."""
        if not rows:
            return [], []
        spec = self.spec
        best = min(self.oriented(r, spec.primary) for r in rows)

        def key(row: ResultRow) -> tuple[Any, ...]:
            primary = self.oriented(row, spec.primary)
            within = math.isfinite(best) and primary <= best + self.epsilon
            # Rows within epsilon of the best form one band, ranked by the tie-breaks only.
            return (
                0 if within else 1,
                0.0 if within else primary,
                *(self.oriented(row, n) for n in spec.tie_breaks),
                row.candidate,
            )

        ordered = sorted(rows, key=key)
        tied = [r for r in ordered if key(r)[0] == 0]
        return ordered, tied

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "epsilon": self.epsilon}


# --------------------------------------------------------------------------------------------------
# Pareto front.


def _pareto_vector(row: ResultRow) -> tuple[float, float, float]:
    """(metric, -p90, -rss): every component larger is better; missing figures are worst."""
    metric = figure_value(row, "metric")
    p90 = figure_value(row, "latency_p90_ms")
    rss = figure_value(row, "peak_rss_mb")
    return (
        -math.inf if metric is None else metric,
        -math.inf if p90 is None else -p90,
        -math.inf if rss is None else -rss,
    )


def _dominates(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))


def pareto_front(rows: Iterable[ResultRow]) -> list[ResultRow]:
    """Ok rows no other ok row dominates (metric max, p90 min, peak RSS min), by p90 latency.

    Rows with identical figures do not dominate each other, so all of them stay on the front.
    """
    ok = [r for r in rows if r.ok]
    vectors = [_pareto_vector(r) for r in ok]
    front = [
        row
        for i, row in enumerate(ok)
        if not any(_dominates(vectors[j], vectors[i]) for j in range(len(ok)) if j != i)
    ]
    front.sort(key=lambda r: (-_pareto_vector(r)[1], -_pareto_vector(r)[0], r.candidate))
    return front
