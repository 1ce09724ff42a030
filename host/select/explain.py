"""The reasons in words: why a row was chosen, what excluded the others, what is undecided."""

from __future__ import annotations

from host.select.constraints import (
    Constraint,
    Violation,
)
from host.select.figures import (
    FIGURES,
    figure_interval,
    figure_value,
    format_value,
)
from host.select.objectives import (
    Objective,
)
from host.select.rows import (
    _MIB,
    ResultRow,
)


def _plural(n: int, word: str = "candidate") -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _exclusion_phrase(constraint: Constraint, violations: list[tuple[ResultRow, Violation]]) -> str:
    closest_row, closest = min(violations, key=lambda rv: (rv[1].normalized, rv[0].candidate))
    head = f"{_plural(len(violations))} excluded by {constraint}"
    if closest.value is None:
        return f"{head} (no {constraint.name} measured)"
    return f"{head} (closest: {closest_row.candidate} at {constraint.figure.format(closest.value)})"


def _failed_phrase(failed: list[ResultRow]) -> str:
    shown = ", ".join(f"{r.candidate} ({_short(r.error or 'no error given')})" for r in failed[:5])
    more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
    return f"{_plural(len(failed))} failed: {shown}{more}"


def _short(text: str, limit: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _choice_phrase(
    chosen: ResultRow,
    objective: Objective,
    feasible: list[ResultRow],
    tied: list[ResultRow],
    pool: str | None = None,
) -> str:
    spec = objective.spec
    primary = FIGURES.get(spec.primary)
    if spec.primary == "metric":
        what = f"highest {chosen.metric} ({format_value(chosen.metric_value)})"
    else:
        label = {
            "latency_p90_ms": "p90 latency",
            "size_bytes": "size",
            "peak_rss_mb": "peak memory",
        }.get(spec.primary, spec.primary)
        value = figure_value(chosen, spec.primary)
        if spec.primary == "size_bytes" and value is not None:
            shown = format_value(value / _MIB, "MB")
        else:
            shown = primary.format(value)
        what = f"{spec.phrase} {label} ({shown})"
    among = (
        _plural(len(feasible), "feasible candidate")
        if pool is None
        else (f"{_plural(len(feasible))} {pool}")
    )
    text = f"{chosen.candidate} chosen: {what} among {among}"
    if len(tied) > 1:
        others = ", ".join(r.candidate for r in tied if r is not chosen)
        within = f" within {objective.epsilon:g}" if objective.epsilon > 0 else ""
        breaks = ", then ".join(
            {
                "latency_p90_ms": "lower p90 latency",
                "peak_rss_mb": "smaller peak memory",
                "size_bytes": "smaller size",
                "metric": f"higher {chosen.metric}",
            }[n]
            for n in spec.tie_breaks
        )
        text += f"; tied{within} with {others}, broken by {breaks}"
    return text


def _undecided_phrase(
    constraint: Constraint, rows: list[ResultRow], chosen_tier: str, point_met: set[str]
) -> str:
    def shown(row: ResultRow) -> str:
        interval = figure_interval(row, constraint.name)
        if interval is None:
            return row.candidate
        lo, hi = (constraint.figure.format(v) for v in interval)
        return f"{row.candidate} [{lo}, {hi}]"

    names = ", ".join(shown(r) for r in rows[:4]) + (
        f" and {len(rows) - 4} more" if len(rows) > 4 else ""
    )
    head = f"{_plural(len(rows))} undecided on {constraint} (95% interval straddles the bound: {names})"
    if chosen_tier == "clear":
        return head + "; not chosen while a candidate clearly meets every constraint"
    if chosen_tier == "point":
        return head
    if any(r.candidate not in point_met for r in rows):
        return head + "; more eval samples would tell"
    return head
