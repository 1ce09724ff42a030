"""Constraints (``"latency_p90_ms<=20"``, ``"accuracy_drop<=0.01@pi-01"``): parsing, and how a row
meets, misses or leaves one undecided."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from host.select.figures import (
    FIGURES,
    Figure,
    figure_interval,
    figure_value,
)
from host.select.rows import (
    ResultRow,
    Verdict,
    _finite_or_none,
)
from shared.errors import ConfigError

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
