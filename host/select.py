"""Pick the best candidate per device from a campaign's result table.

A campaign produces one :class:`ResultRow` per (candidate, device). :func:`select` applies the
user's :class:`Constraint` list (``"latency_p90_ms<=20"``, ``"accuracy_drop<=0.01"``, ...) and an
:class:`Objective` to each device's rows and returns a :class:`DeviceSelection`: the chosen row, the
feasible set, the Pareto front (metric up, p90 latency down, peak memory down) and a reason in plain
words. A device where nothing fits gets no choice but a *closest miss*: the row whose constraint
violations, each normalized by its bound, add up to the least.

Quality figures are estimates from a finite eval set, so a constraint on one (the metric, or its
drop from the baseline) is judged on the figure's 95% interval: *met* when the whole interval meets
the bound, *missed* when none of it does, *undecided* when the interval straddles the bound. The
choice is made, in this order, among

1. the candidates that clearly meet every constraint;
2. if there are none: those that meet every constraint on the point estimate, with the undecided
   ones not clearly met (the reason says "not clearly");
3. if there are none either, no candidate is chosen: the closest miss is reported, and candidates
   whose interval still reaches the bound are named as undecided (more eval samples would tell).

``strict=True`` (``--strict``) compares point estimates only, as figures without an interval
(latency, memory, size) always are.
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


# --------------------------------------------------------------------------------------------------
# Constraints.

Operator = Literal["<=", "<", ">=", ">", "=="]
_CONSTRAINT_RE = re.compile(
    r"^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op><=|>=|==|<|>)\s*"
    r"(?P<value>[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)\s*"
    r"(?:@\s*(?P<device>[^\s@]+)\s*)?$"
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
    """``figure op bound``, e.g. ``latency_p90_ms <= 20``; with ``@device``
    (``latency_p90_ms<=5@pi-01``) it applies on that device only."""

    name: str
    op: Operator
    bound: float
    device: str | None = None

    def __post_init__(self) -> None:
        if self.name not in FIGURES:
            raise ConfigError(
                f"unknown figure {self.name!r} in constraint; valid names: {_valid_names()}"
            )
        if self.op not in ("<=", "<", ">=", ">", "=="):
            raise ConfigError(f"unknown operator {self.op!r}; use one of <=, <, >=, >, ==")
        if not math.isfinite(self.bound):
            raise ConfigError(f"constraint bound for {self.name} must be a finite number")
        if self.device is not None:
            from shared.topics import check_device_id

            try:
                check_device_id(self.device)
            except Exception as exc:
                raise ConfigError(
                    f"constraint {self.name}{self.op}{self.bound:g}@{self.device}: {exc}"
                ) from exc

    def applies_to(self, device: str) -> bool:
        """Whether this constraint binds ``device`` (always, without an ``@device``)."""
        return self.device is None or self.device == device

    @classmethod
    def parse(cls, text: str) -> Constraint:
        match = _CONSTRAINT_RE.match(text or "")
        if match is None:
            raise ConfigError(
                f"cannot read constraint {text!r}: write NAME OP NUMBER, e.g. "
                f"'latency_p90_ms<=20', optionally @DEVICE for one device "
                f"('latency_p90_ms<=5@pi-01'), with OP one of <=, <, >=, >, == and NAME one of: "
                f"{_valid_names()}"
            )
        return cls(match["name"], match["op"], float(match["value"]), match["device"])  # type: ignore[arg-type]

    @property
    def figure(self) -> Figure:
        return FIGURES.get(self.name)

    def __str__(self) -> str:
        where = f"@{self.device}" if self.device is not None else ""
        return f"{self.name}{self.op}{self.bound:g}{where}"

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

    def satisfied_by(self, value: float) -> bool:
        if self.op == "<=":
            return value <= self.bound
        if self.op == "<":
            return value < self.bound
        if self.op == ">=":
            return value >= self.bound
        if self.op == ">":
            return value > self.bound
        return math.isclose(value, self.bound, rel_tol=1e-9, abs_tol=1e-12)

    def judge(self, row: ResultRow, *, strict: bool = False) -> tuple[Verdict, Violation | None]:
        """Met, missed or undecided, judged on the figure's 95% interval where it has one.

        The violation is the point estimate's (None when the point meets the bound).
        """
        violation = self.check(row)
        interval = None if strict or self.op == "==" else figure_interval(row, self.name)
        if interval is None or figure_value(row, self.name) is None:
            return ("met" if violation is None else "missed"), violation
        low, high = interval
        # The end of the interval that is hardest to meet, and the one that is easiest.
        worst, best = (high, low) if self.op in ("<=", "<") else (low, high)
        if self.satisfied_by(worst):
            return "met", violation
        if not self.satisfied_by(best):
            return "missed", violation or Violation(self, best, 0.0, 0.0)
        return "undecided", violation

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "bound": self.bound,
            "device": self.device,
            "text": str(self),
        }


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
    """What was chosen for one device and why.

    ``basis`` says how sure the choice is: "clear" (every constraint met by the whole interval),
    "point" (met by the point estimates only: see the module doc), or "none".
    """

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
    undecided: dict[str, list[str]] = field(default_factory=dict)  # constraint -> candidate ids
    basis: Literal["clear", "point", "none"] = "none"
    strict: bool = False

    @property
    def chosen_id(self) -> str | None:
        return None if self.candidate is None else self.candidate.candidate

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "chosen": self.chosen_id,
            "candidate": None if self.candidate is None else self.candidate.to_dict(),
            "reason": self.reason,
            "basis": self.basis,
            "strict": self.strict,
            "feasible": [r.candidate for r in self.feasible],
            "pareto": [r.candidate for r in self.pareto],
            "closest_miss": None if self.closest_miss is None else self.closest_miss.to_dict(),
            "failed": [{"candidate": r.candidate, "error": r.error} for r in self.failed],
            "excluded": {k: list(v) for k, v in self.excluded.items()},
            "undecided": {k: list(v) for k, v in self.undecided.items()},
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


def _select_device(
    device: str,
    rows: list[ResultRow],
    constraints: list[Constraint],
    objective: Objective,
    strict: bool = False,
) -> DeviceSelection:
    ok = [r for r in rows if r.ok]
    failed = [r for r in rows if not r.ok]
    pareto = pareto_front(ok)

    clear: list[ResultRow] = []
    point: list[ResultRow] = []  # every constraint met on the point estimate, some only there
    broken: dict[str, list[Violation]] = {}
    missed_by: dict[str, list[tuple[ResultRow, Violation]]] = {}
    undecided_by: dict[str, list[ResultRow]] = {}
    for row in ok:
        verdicts = [(c, *c.judge(row, strict=strict)) for c in constraints]
        violations = [v for _c, _verdict, v in verdicts if v is not None]
        for c, verdict, v in verdicts:
            if verdict == "missed" and v is not None:
                missed_by.setdefault(str(c), []).append((row, v))
            elif verdict == "undecided":
                undecided_by.setdefault(str(c), []).append(row)
        if violations:
            broken[row.candidate] = violations
        if all(verdict == "met" for _c, verdict, _v in verdicts):
            clear.append(row)
        elif not violations and not any(verdict == "missed" for _c, verdict, _v in verdicts):
            point.append(row)

    if clear:
        feasible, basis = clear, "clear"
    elif point:
        feasible, basis = point, "point"
    else:
        feasible, basis = [], "none"
    chosen_ids = {r.candidate for r in feasible}
    point_met = {r.candidate for r in ok if r.candidate not in broken}

    excluded = {
        str(c): [r.candidate for r, _ in missed_by[str(c)]]
        for c in constraints
        if str(c) in missed_by
    }
    undecided = {
        str(c): [r.candidate for r in undecided_by[str(c)]]
        for c in constraints
        if str(c) in undecided_by
    }
    notes = [_exclusion_phrase(c, missed_by[str(c)]) for c in constraints if str(c) in missed_by]
    for c in constraints:
        rows_undecided = [r for r in undecided_by.get(str(c), []) if r.candidate not in chosen_ids]
        if basis == "point":
            rows_undecided = undecided_by.get(str(c), [])
        if rows_undecided:
            notes.append(_undecided_phrase(c, rows_undecided, basis, point_met))
    if failed:
        notes.append(_failed_phrase(failed))

    chosen: ResultRow | None = None
    closest: ClosestMiss | None = None
    if feasible:
        ordered, tied = objective.rank(feasible)
        chosen = ordered[0]
        if basis == "point":
            head = "no candidate clearly meets every constraint (on its 95% interval); " + (
                _choice_phrase(
                    chosen,
                    objective,
                    feasible,
                    tied,
                    "that meet them on the point estimate only",
                )
            )
        else:
            head = _choice_phrase(chosen, objective, feasible, tied)
    elif ok:
        missing = [r for r in ok if r.candidate in broken]
        miss_row = min(
            missing,
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
        undecided=undecided,
        basis=basis,
        strict=strict,
    )


def select(
    rows: Iterable[ResultRow],
    constraints: Iterable[Constraint | str] = (),
    objective: Objective | str | None = None,
    *,
    devices: Iterable[str] = (),
    strict: bool = False,
) -> dict[str, DeviceSelection]:
    """Choose one candidate per device; ``devices`` adds devices that produced no rows at all.

    ``strict`` judges quality constraints on point estimates instead of 95% intervals.
    """
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
        device: _select_device(
            device, per_device[device], [c for c in parsed if c.applies_to(device)], goal, strict
        )
        for device in sorted(per_device)
    }
