"""The choice per device: the closest miss, the selection and its reason, and ``select``."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from host.select.constraints import (
    Constraint,
    Violation,
    _as_constraints,
)
from host.select.explain import (
    _choice_phrase,
    _exclusion_phrase,
    _failed_phrase,
    _undecided_phrase,
)
from host.select.objectives import (
    Objective,
    pareto_front,
)
from host.select.rows import (
    ResultRow,
    _finite_or_none,
)
from shared.errors import ConfigError

logger = logging.getLogger(__name__)


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
