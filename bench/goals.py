"""The one table of ``make bench``: each benchmark's goals next to what it measured.

A benchmark module takes part by defining ``goal_rows(report) -> list[GoalRow]``, which reads the
JSON report it wrote (see ``bench/__main__.py`` for the list and the arguments each runs with).
Rows compare figures measured side by side in one run; a row whose goal is informational has
``met=None``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class GoalRow:
    bench: str
    measure: str
    measured: str
    goal: str
    met: bool | None
    baseline: str = ""
    ratio: float | None = None

    @property
    def result(self) -> str:
        return "info" if self.met is None else ("pass" if self.met else "MISS")

    def to_json(self) -> dict[str, Any]:
        return asdict(self) | {"result": self.result}


def fmt_ratio(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)
