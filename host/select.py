"""Pick the best candidate per device from a campaign's result table.

A campaign produces one :class:`ResultRow` per (candidate, device). :func:`select` applies the
user's :class:`Constraint` list (``"latency_p90_ms<=20"``, ``"accuracy_drop<=0.01"``, ...) and an
:class:`Objective` to each device's rows and returns a :class:`DeviceSelection`: the chosen row, the
feasible set, the Pareto front (metric up, p90 latency down, peak memory down) and a reason in plain
words. A device where nothing fits gets no choice but a *closest miss*: the row whose constraint
violations, each normalized by its bound, add up to the least.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.errors import ConfigError
from shared.registry import Registry
from shared.results import BenchmarkResult

logger = logging.getLogger(__name__)

__all__ = [
    "FIGURES",
    "OBJECTIVES",
    "ClosestMiss",
    "Constraint",
    "DeviceSelection",
    "Figure",
    "Objective",
    "ResultRow",
    "Violation",
    "figure_value",
    "pareto_front",
    "select",
]

RowStatus = Literal["ok", "failed"]
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
        }

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
    ) -> ResultRow:
        """Build a row from the agent's benchmark record (shared.results.BenchmarkResult)."""
        lat = result.latency_ms
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


# --------------------------------------------------------------------------------------------------
# Figures: the names constraints and objectives may use.


@dataclass(frozen=True)
class Figure:
    """A number read off a row, with its unit and which direction is better."""

    name: str
    read: Callable[[ResultRow], float | None]
    unit: str
    better: Literal["lower", "higher"]
    description: str

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


FIGURES: Registry[str, Figure] = Registry("figure")


def _add_figure(
    name: str,
    read: Callable[[ResultRow], float | None],
    unit: str,
    better: Literal["lower", "higher"],
    description: str,
) -> None:
    FIGURES.add(name, Figure(name, read, unit, better, description))


for _key in ("mean", "p50", "p90", "p95", "p99", "max"):
    _add_figure(f"latency_{_key}_ms", _latency(_key), "ms", "lower", f"{_key} latency in ms")
_add_figure("peak_rss_mb", lambda r: r.peak_rss_mb, "MB", "lower", "peak worker RSS in MiB")
_add_figure("size_mb", lambda r: r.size_bytes / _MIB, "MB", "lower", "artifact size in MiB")
_add_figure("size_bytes", lambda r: float(r.size_bytes), "B", "lower", "artifact size in bytes")
_add_figure("metric", lambda r: r.metric_value, "", "higher", "the row's metric, whatever it is")
_add_figure("metric_drop", lambda r: r.metric_drop, "", "lower", "baseline metric minus metric")
for _name in ("accuracy", "agreement"):
    _add_figure(_name, _named_metric(_name), "", "higher", f"{_name} (rows measuring {_name})")
    _add_figure(
        f"{_name}_drop", _named_metric_drop(_name), "", "lower", f"baseline {_name} minus {_name}"
    )


def figure_value(row: ResultRow, name: str) -> float | None:
    """The named figure of a row, or None where the row does not have it (or it is NaN)."""
    value = FIGURES.get(name).read(row)
    if value is None or not math.isfinite(value):
        return None
    return float(value)


# --------------------------------------------------------------------------------------------------
# Constraints.

Operator = Literal["<=", "<", ">=", ">", "=="]
_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*$"
)
# A bound of zero cannot scale a violation; this keeps "== 0" or "drop <= 0" usable in closest-miss.
_NORMALIZE_FLOOR = 1e-9


def _valid_names() -> str:
    return ", ".join(sorted(FIGURES))


@dataclass(frozen=True)
class Violation:
    """How one row breaks one constraint."""

    constraint: Constraint
    value: float | None  # None: the row does not have the figure at all
    excess: float  # absolute distance past the bound (inf when the figure is missing)
    normalized: float  # excess relative to the bound

    def describe(self) -> str:
        fig = self.constraint.figure
        if self.value is None:
            return f"{self.constraint} (no {fig.name} measured)"
        if self.constraint.op == "==":
            return f"{self.constraint} ({fig.format(self.value)}, off by {fig.format(self.excess)})"
        pct = f", {self.normalized:.0%}" if math.isfinite(self.normalized) else ""
        over = fig.format(self.excess)
        return f"{self.constraint} ({fig.format(self.value)}, over by {over}{pct})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "constraint": str(self.constraint),
            "value": _finite_or_none(self.value),
            "excess": _finite_or_none(self.excess),
            "normalized": _finite_or_none(self.normalized),
        }


@dataclass(frozen=True)
class Constraint:
    """``figure op bound``, e.g. ``latency_p90_ms <= 20``."""

    name: str
    op: Operator
    bound: float

    def __post_init__(self) -> None:
        if self.name not in FIGURES:
            raise ConfigError(
                f"unknown figure {self.name!r} in constraint; valid names: {_valid_names()}"
            )
        if self.op not in ("<=", "<", ">=", ">", "=="):
            raise ConfigError(f"unknown operator {self.op!r}; use one of <=, <, >=, >, ==")
        if not math.isfinite(self.bound):
            raise ConfigError(f"constraint bound for {self.name} must be a finite number")

    @classmethod
    def parse(cls, text: str) -> Constraint:
        match = _CONSTRAINT_RE.match(text or "")
        if match is None:
            raise ConfigError(
                f"cannot read constraint {text!r}: write NAME OP NUMBER, e.g. "
                f"'latency_p90_ms<=20', with OP one of <=, <, >=, >, == and NAME one of: "
                f"{_valid_names()}"
            )
        return cls(match["name"], match["op"], float(match["value"]))  # type: ignore[arg-type]

    @property
    def figure(self) -> Figure:
        return FIGURES.get(self.name)

    def __str__(self) -> str:
        return f"{self.name}{self.op}{self.bound:g}"

    def check(self, row: ResultRow) -> Violation | None:
        """None when the row meets the constraint, else how it breaks it."""
        value = figure_value(row, self.name)
        if value is None:
            return Violation(self, None, math.inf, math.inf)
        bound = self.bound
        if self.op == "<=":
            excess = value - bound if value > bound else 0.0
            met = value <= bound
        elif self.op == "<":
            excess = value - bound
            met = value < bound
        elif self.op == ">=":
            excess = bound - value if value < bound else 0.0
            met = value >= bound
        elif self.op == ">":
            excess = bound - value
            met = value > bound
        else:
            met = math.isclose(value, bound, rel_tol=1e-9, abs_tol=1e-12)
            excess = abs(value - bound)
        if met:
            return None
        return Violation(self, value, excess, excess / max(abs(bound), _NORMALIZE_FLOOR))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op": self.op, "bound": self.bound, "text": str(self)}


def _as_constraints(items: Iterable[Constraint | str]) -> list[Constraint]:
    out: list[Constraint] = []
    for item in items:
        if isinstance(item, Constraint):
            out.append(item)
        elif isinstance(item, str):
            out.append(Constraint.parse(item))
        else:
            raise ConfigError(
                f"constraint {item!r} is neither a Constraint nor a string like "
                "'latency_p90_ms<=20'"
            )
    return out


# --------------------------------------------------------------------------------------------------
# Objectives.


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


# --------------------------------------------------------------------------------------------------
# Selection.


@dataclass(frozen=True)
class ClosestMiss:
    """The infeasible row nearest to meeting every constraint."""

    row: ResultRow
    violations: list[Violation]

    @property
    def score(self) -> float:
        return sum(v.normalized for v in self.violations)

    def describe(self) -> str:
        return f"{self.row.candidate} breaks " + "; ".join(v.describe() for v in self.violations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidate": self.row.candidate,
            "score": _finite_or_none(self.score),
            "violations": [v.to_dict() for v in self.violations],
            "summary": self.describe(),
        }


@dataclass(frozen=True)
class DeviceSelection:
    """What was chosen for one device and why."""

    device: str
    candidate: ResultRow | None
    reason: str
    feasible: list[ResultRow]
    pareto: list[ResultRow]
    closest_miss: ClosestMiss | None = None
    failed: list[ResultRow] = field(default_factory=list)
    excluded: dict[str, list[str]] = field(default_factory=dict)  # constraint -> candidate ids
    objective: Objective = field(default_factory=Objective)
    constraints: list[Constraint] = field(default_factory=list)

    @property
    def chosen_id(self) -> str | None:
        return None if self.candidate is None else self.candidate.candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "chosen": self.chosen_id,
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
            "reason": self.reason,
            "feasible": [r.candidate for r in self.feasible],
            "pareto": [r.candidate for r in self.pareto],
            "closest_miss": None if self.closest_miss is None else self.closest_miss.to_dict(),
            "failed": [{"candidate": r.candidate, "error": r.error} for r in self.failed],
            "excluded": {k: list(v) for k, v in self.excluded.items()},
            "objective": self.objective.to_dict(),
            "constraints": [str(c) for c in self.constraints],
        }


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
    chosen: ResultRow, objective: Objective, feasible: list[ResultRow], tied: list[ResultRow]
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
    text = f"{chosen.candidate} chosen: {what} among {_plural(len(feasible), 'feasible candidate')}"
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


def _select_device(
    device: str,
    rows: list[ResultRow],
    constraints: list[Constraint],
    objective: Objective,
) -> DeviceSelection:
    ok = [r for r in rows if r.ok]
    failed = [r for r in rows if not r.ok]
    pareto = pareto_front(ok)

    feasible: list[ResultRow] = []
    broken: dict[str, list[Violation]] = {}
    by_constraint: dict[str, list[tuple[ResultRow, Violation]]] = {}
    for row in ok:
        violations = [v for c in constraints if (v := c.check(row)) is not None]
        if violations:
            broken[row.candidate] = violations
            for v in violations:
                by_constraint.setdefault(str(v.constraint), []).append((row, v))
        else:
            feasible.append(row)

    excluded = {
        str(c): [r.candidate for r, _ in by_constraint[str(c)]]
        for c in constraints
        if str(c) in by_constraint
    }
    notes = [
        _exclusion_phrase(c, by_constraint[str(c)]) for c in constraints if str(c) in by_constraint
    ]
    if failed:
        notes.append(_failed_phrase(failed))

    chosen: ResultRow | None = None
    closest: ClosestMiss | None = None
    if feasible:
        ordered, tied = objective.rank(feasible)
        chosen = ordered[0]
        head = _choice_phrase(chosen, objective, feasible, tied)
    elif ok:
        miss_row = min(
            ok,
            key=lambda r: (
                sum(v.normalized for v in broken[r.candidate]),
                objective.oriented(r, objective.spec.primary),
                r.candidate,
            ),
        )
        closest = ClosestMiss(miss_row, broken[miss_row.candidate])
        head = (
            f"no candidate meets all constraints ({', '.join(str(c) for c in constraints)}); "
            f"closest miss: {closest.describe()}"
        )
    elif failed:
        head = "no candidate was measured successfully on this device"
    else:
        head = "no results for this device"

    reason = head + ("; " + "; ".join(notes) if notes else "")
    logger.debug("selection for %s: %s", device, reason)
    return DeviceSelection(
        device=device,
        candidate=chosen,
        reason=reason,
        feasible=feasible,
        pareto=pareto,
        closest_miss=closest,
        failed=failed,
        excluded=excluded,
        objective=objective,
        constraints=list(constraints),
    )


def select(
    rows: Iterable[ResultRow],
    constraints: Iterable[Constraint | str] = (),
    objective: Objective | str | None = None,
    *,
    devices: Iterable[str] = (),
) -> dict[str, DeviceSelection]:
    """Choose one candidate per device; ``devices`` adds devices that produced no rows at all."""
    parsed = _as_constraints(constraints)
    goal = Objective.parse(objective)
    per_device: dict[str, list[ResultRow]] = {d: [] for d in devices}
    seen: set[tuple[str, str]] = set()
    for row in rows:
        key = (row.device, row.candidate)
        if key in seen:
            raise ConfigError(
                f"candidate {row.candidate!r} appears twice for device {row.device!r}; "
                "keep one result row per (candidate, device)"
            )
        seen.add(key)
        per_device.setdefault(row.device, []).append(row)
    return {
        device: _select_device(device, per_device[device], parsed, goal)
        for device in sorted(per_device)
    }
