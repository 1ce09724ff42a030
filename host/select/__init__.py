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

The package, by job: ``rows`` (ResultRow), ``figures`` (FIGURES: what constraints and objectives
may name), ``constraints`` (parsing and judging one), ``objectives`` (OBJECTIVES, ranking, the
Pareto front), ``explain`` (the reasons in words), ``choose`` (the choice per device: ``select``).
"""

from __future__ import annotations

from host.select.choose import ClosestMiss, DeviceSelection, select
from host.select.constraints import Constraint, Violation
from host.select.figures import FIGURES, Figure, figure_interval, figure_value, format_value
from host.select.objectives import OBJECTIVES, Objective, ObjectiveSpec, pareto_front
from host.select.rows import ResultRow

__all__ = [
    "FIGURES",
    "OBJECTIVES",
    "ClosestMiss",
    "Constraint",
    "DeviceSelection",
    "Figure",
    "Objective",
    "ObjectiveSpec",
    "ResultRow",
    "Violation",
    "figure_interval",
    "figure_value",
    "format_value",
    "pareto_front",
    "select",
]
