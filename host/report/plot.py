"""The Pareto plot of one device as inline SVG: metric vs p90 latency, the Pareto points joined,
the chosen one ringed, the closest miss marked, constraint lines where they map to an axis.

The HTML report (host.report.page) and the dashboard (host.api.dashboard) both draw it with
:func:`pareto_svg`, so the two never disagree about what a campaign chose. Everything
user-supplied is escaped: candidate and recipe names come from user code.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from host.select import (
    Constraint,
    DeviceSelection,
    ResultRow,
    figure_value,
    format_value,
)

__all__ = ["nice_ticks", "pareto_svg"]

_MIB = 1024 * 1024

# Plot geometry in SVG user units; the SVG scales to its container through viewBox.
_W, _H = 680, 400
_LEFT, _RIGHT, _TOP, _BOTTOM = 66, 24, 40, 52
_FONT_PX = 11
_CHAR_W = 6.4  # average glyph width of the label font at _FONT_PX, for overlap checks

_COLORS = {
    "point": "#5b7db1",
    "infeasible": "#a7adb5",
    "pareto": "#e07b00",
    "chosen": "#1a9850",
    "constraint": "#c0392b",
    "grid": "#e6e8eb",
    "axis": "#4a4f57",
}


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


# --------------------------------------------------------------------------------------------------
# Axis scaling.


def nice_ticks(lo: float, hi: float, target: int = 6) -> list[float]:
    """Round tick values (1, 2, 2.5, 5 x 10^k steps) covering [lo, hi]."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(target - 1, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks: list[float] = []
    value = first
    while value <= hi + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _padded_range(values: Sequence[float], *, from_zero: bool) -> tuple[float, float, list[float]]:
    """A range a little wider than the values, widened to whole ticks.

    With ``from_zero`` (latency) the axis starts at 0 whenever the data sit closer to 0 than to
    their own spread, so ratios between candidates read true.
    """
    lo, hi = min(values), max(values)
    span = hi - lo
    pad = span * 0.08 if span > 0 else max(abs(hi) * 0.1, 1e-3)
    start_at_zero = from_zero and lo >= 0 and lo <= 0.5 * hi
    lo = 0.0 if start_at_zero else lo - pad
    hi = hi + pad
    ticks = nice_ticks(lo, hi)
    if len(ticks) < 2:
        return lo, hi, ticks
    # The axis ends on ticks, and the ticks drawn are exactly these, so both ends carry a label.
    step = ticks[1] - ticks[0]
    first = math.floor(lo / step + 1e-9)
    last = math.ceil(hi / step - 1e-9)
    ticks = [round(i * step, 12) for i in range(first, last + 1)]
    return ticks[0], ticks[-1], ticks


def _tick_label(value: float, step: float) -> str:
    # As many decimals as the step needs (2.5 needs one, 0.025 three), the same for every tick.
    decimals = next((d for d in range(8) if abs(round(step, d) - step) <= step * 1e-6), 8)
    return f"{value:.{decimals}f}"


# --------------------------------------------------------------------------------------------------
# Constraint lines.


@dataclass(frozen=True)
class _Line:
    axis: str  # "x" or "y"
    value: float
    label: str


def _constraint_lines(constraints: Iterable[Constraint], rows: Sequence[ResultRow]) -> list[_Line]:
    """Constraints that are a vertical (p90 latency) or horizontal (the metric) line on the plot."""
    metric_names = {r.metric for r in rows}
    baselines = {r.baseline_metric for r in rows if r.baseline_metric is not None}
    lines: list[_Line] = []
    for c in constraints:
        if c.name == "latency_p90_ms":
            lines.append(_Line("x", c.bound, str(c)))
        elif c.name == "metric" or (c.name in metric_names and c.name in ("accuracy", "agreement")):
            lines.append(_Line("y", c.bound, str(c)))
        elif (c.name == "metric_drop" or c.name.removesuffix("_drop") in metric_names) and (
            # A drop is a metric line only when every row shares one baseline.
            c.name.endswith("_drop") and len(baselines) == 1
        ):
            (baseline,) = baselines
            lines.append(_Line("y", baseline - c.bound, str(c)))
    return lines


# --------------------------------------------------------------------------------------------------
# Label placement.


@dataclass(frozen=True)
class _Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: _Box) -> bool:
        return not (
            self.x1 <= other.x0 or other.x1 <= self.x0 or self.y1 <= other.y0 or other.y1 <= self.y0
        )

    def inside(self, outer: _Box) -> bool:
        return (
            self.x0 >= outer.x0
            and self.y0 >= outer.y0
            and self.x1 <= outer.x1
            and self.y1 <= outer.y1
        )


def _label_box(x: float, y: float, width: float, anchor: str) -> _Box:
    # (x, y) is the text baseline anchor point.
    if anchor == "start":
        x0 = x
    elif anchor == "end":
        x0 = x - width
    else:
        x0 = x - width / 2
    return _Box(x0, y - _FONT_PX * 0.8, x0 + width, y + _FONT_PX * 0.25)


_PLACEMENTS = (
    (8, 4, "start"),
    (-8, 4, "end"),
    (0, -9, "middle"),
    (0, 16, "middle"),
    (7, -7, "start"),
    (-7, -7, "end"),
    (7, 14, "start"),
    (-7, 14, "end"),
    (14, 4, "start"),
    (-14, 4, "end"),
    (0, -20, "middle"),
    (0, 27, "middle"),
)


def _place_label(
    x: float, y: float, text: str, taken: list[_Box], area: _Box
) -> tuple[float, float, str] | None:
    width = len(text) * _CHAR_W
    for dx, dy, anchor in _PLACEMENTS:
        box = _label_box(x + dx, y + dy, width, anchor)
        if box.inside(area) and not any(box.overlaps(t) for t in taken):
            taken.append(box)
            return x + dx, y + dy, anchor
    return None


# --------------------------------------------------------------------------------------------------
# The plot.


def _tooltip(row: ResultRow) -> str:
    return (
        f"{row.candidate} ({row.recipe}) {row.format}/{row.precision}\n"
        f"p90 {format_value(figure_value(row, 'latency_p90_ms'), 'ms')}, "
        f"{row.metric} {format_value(row.metric_value)}, "
        f"peak RSS {format_value(row.peak_rss_mb, 'MB')}, "
        f"size {format_value(row.size_bytes / _MIB, 'MB')}"
    )


def _front_on_plot_axes(pareto_rows: Sequence[ResultRow]) -> list[ResultRow]:
    """The Pareto rows also optimal on metric vs p90 alone, by latency: the line the plot joins.

    The front is three-dimensional (peak memory too); joining all of it in latency order zigzags,
    because a row can be on it only for its memory. Its two-axis part is a monotone staircase.
    """
    ordered = sorted(
        pareto_rows,
        key=lambda r: (
            figure_value(r, "latency_p90_ms") or 0.0,
            -(figure_value(r, "metric") or 0.0),
            r.candidate,
        ),
    )
    line: list[ResultRow] = []
    best = -math.inf
    for r in ordered:
        metric = figure_value(r, "metric") or 0.0
        if metric > best or (line and _same_point(r, line[-1])):
            line.append(r)
            best = max(best, metric)
    return line


def _same_point(a: ResultRow, b: ResultRow) -> bool:
    return figure_value(a, "latency_p90_ms") == figure_value(b, "latency_p90_ms") and figure_value(
        a, "metric"
    ) == figure_value(b, "metric")


def pareto_svg(device: str, rows: Sequence[ResultRow], selection: DeviceSelection | None) -> str:
    """An inline SVG: metric vs p90 latency for one device's ok rows."""
    plotted = [
        r
        for r in rows
        if r.ok
        and figure_value(r, "latency_p90_ms") is not None
        and figure_value(r, "metric") is not None
    ]
    metric_name = plotted[0].metric if plotted else (rows[0].metric if rows else "metric")
    title = f"{device}: {metric_name} vs p90 latency"
    head = (
        f'<svg class="pareto" role="img" xmlns="http://www.w3.org/2000/svg" '
        f'viewBox="0 0 {_W} {_H}" width="{_W}" height="{_H}" '
        f'font-family="system-ui, sans-serif" font-size="{_FONT_PX}">'
        f"<title>{_e(title)}</title>"
    )
    if not plotted:
        empty = (
            "no candidate has both a p90 latency and a metric to plot"
            if any(r.ok for r in rows)
            else "no successful measurements to plot"
        )
        return (
            head + f'<rect x="0.5" y="0.5" width="{_W - 1}" height="{_H - 1}" fill="#fafafa" '
            f'stroke="{_COLORS["grid"]}"/>'
            f'<text x="{_W / 2}" y="{_H / 2}" text-anchor="middle" fill="#666" font-size="14">'
            f"{_e(empty)}</text></svg>"
        )

    chosen = selection.candidate if selection is not None else None
    chosen_id = chosen.candidate if chosen is not None else None
    pareto_ids = {r.candidate for r in selection.pareto} if selection is not None else set()
    feasible_ids = (
        {r.candidate for r in selection.feasible}
        if selection is not None
        else {r.candidate for r in plotted}
    )
    constraints = selection.constraints if selection is not None else []
    miss = selection.closest_miss if selection is not None else None
    miss_id = miss.row.candidate if miss is not None else None

    xs = [figure_value(r, "latency_p90_ms") or 0.0 for r in plotted]
    ys = [figure_value(r, "metric") or 0.0 for r in plotted]
    lines = _constraint_lines(constraints, plotted)
    # A bound far from the data would squash every point into a corner; such lines are named in the
    # caption instead of drawn.
    x_span = (max(xs) - min(xs)) or max(abs(max(xs)), 1.0)
    y_span = (max(ys) - min(ys)) or max(abs(max(ys)), 0.01)
    drawn: list[_Line] = []
    off_chart: list[_Line] = []
    for line in lines:
        if line.axis == "x":
            near = 0 <= line.value <= max(2.5 * max(xs), max(xs) + x_span)
        else:
            near = min(ys) - 1.5 * y_span <= line.value <= max(ys) + 1.5 * y_span
        if near:
            drawn.append(line)
        else:
            off_chart.append(line)
    x_lo, x_hi, x_ticks = _padded_range(
        xs + [ln.value for ln in drawn if ln.axis == "x"], from_zero=True
    )
    y_lo, y_hi, y_ticks = _padded_range(
        ys + [ln.value for ln in drawn if ln.axis == "y"], from_zero=False
    )

    px0, px1 = _LEFT, _W - _RIGHT
    py0, py1 = _TOP, _H - _BOTTOM

    def sx(v: float) -> float:
        return px0 + (v - x_lo) / (x_hi - x_lo) * (px1 - px0)

    def sy(v: float) -> float:
        return py1 - (v - y_lo) / (y_hi - y_lo) * (py1 - py0)

    out: list[str] = [head]
    out.append(
        f'<rect x="{px0}" y="{py0}" width="{px1 - px0}" height="{py1 - py0}" fill="#fff" '
        f'stroke="{_COLORS["axis"]}" stroke-width="1"/>'
    )

    # Axes: grid, ticks and tick labels, then axis titles with units.
    x_step = x_ticks[1] - x_ticks[0] if len(x_ticks) > 1 else 1.0
    y_step = y_ticks[1] - y_ticks[0] if len(y_ticks) > 1 else 0.1
    for t in x_ticks:
        x = sx(t)
        out.append(
            f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py1}" stroke="{_COLORS["grid"]}"/>'
            f'<line x1="{x:.1f}" y1="{py1}" x2="{x:.1f}" y2="{py1 + 5}" '
            f'stroke="{_COLORS["axis"]}"/>'
            f'<text x="{x:.1f}" y="{py1 + 17}" text-anchor="middle" fill="{_COLORS["axis"]}">'
            f"{_e(_tick_label(t, x_step))}</text>"
        )
    for t in y_ticks:
        y = sy(t)
        out.append(
            f'<line x1="{px0}" y1="{y:.1f}" x2="{px1}" y2="{y:.1f}" stroke="{_COLORS["grid"]}"/>'
            f'<line x1="{px0 - 5}" y1="{y:.1f}" x2="{px0}" y2="{y:.1f}" '
            f'stroke="{_COLORS["axis"]}"/>'
            f'<text x="{px0 - 8}" y="{y + 4:.1f}" text-anchor="end" fill="{_COLORS["axis"]}">'
            f"{_e(_tick_label(t, y_step))}</text>"
        )
    out.append(
        f'<text x="{(px0 + px1) / 2:.1f}" y="{_H - 12}" text-anchor="middle" font-size="12" '
        f'fill="{_COLORS["axis"]}">p90 latency (ms)</text>'
        f'<text transform="translate(16 {(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle" '
        f'font-size="12" fill="{_COLORS["axis"]}">{_e(metric_name)} (higher is better)</text>'
    )

    # Legend along the top margin.
    legend = [
        ("circle", _COLORS["point"], "feasible"),
        ("hollow", _COLORS["infeasible"], "breaks a constraint"),
        ("circle", _COLORS["pareto"], "Pareto-optimal"),
        ("ring", _COLORS["chosen"], "chosen"),
    ]
    if miss_id is not None:
        legend.append(("miss", _COLORS["constraint"], "closest miss"))
    if drawn:
        legend.append(("dash", _COLORS["constraint"], "constraint"))
    lx = px0
    for shape, color, text in legend:
        cy = 18
        if shape == "circle":
            out.append(f'<circle cx="{lx + 5}" cy="{cy}" r="4.5" fill="{color}"/>')
        elif shape == "hollow":
            out.append(
                f'<circle cx="{lx + 5}" cy="{cy}" r="4" fill="#fff" stroke="{color}" '
                'stroke-width="1.5"/>'
            )
        elif shape == "miss":
            out.append(
                f'<circle cx="{lx + 5}" cy="{cy}" r="6" fill="none" stroke="{color}" '
                'stroke-width="1.8" stroke-dasharray="3 2"/>'
            )
        elif shape == "ring":
            out.append(
                f'<circle cx="{lx + 5}" cy="{cy}" r="6" fill="none" stroke="{color}" '
                'stroke-width="2.5"/>'
            )
        else:
            out.append(
                f'<line x1="{lx}" y1="{cy}" x2="{lx + 14}" y2="{cy}" stroke="{color}" '
                'stroke-width="1.5" stroke-dasharray="4 3"/>'
            )
        out.append(f'<text x="{lx + 18}" y="{cy + 4}" fill="#333">{_e(text)}</text>')
        lx += 18 + len(text) * _CHAR_W + 16

    taken: list[_Box] = []
    area = _Box(px0 + 1, py0 + 1, px1 - 1, py1 - 1)

    # Every marker is reserved before any label is placed, so labels avoid all of them.
    coords = {
        r.candidate: (
            sx(figure_value(r, "latency_p90_ms") or 0.0),
            sy(figure_value(r, "metric") or 0.0),
        )
        for r in plotted
    }
    for x, y in coords.values():
        taken.append(_Box(x - 5, y - 5, x + 5, y + 5))
    for ringed in (chosen_id, miss_id):
        if ringed in coords:
            cx, cy = coords[ringed]
            taken.append(_Box(cx - 10, cy - 10, cx + 10, cy + 10))

    # Constraint lines; their labels dodge the markers and are claimed before any point label.
    for line in drawn:
        if line.axis == "x":
            x = sx(line.value)
            out.append(
                f'<line x1="{x:.1f}" y1="{py0}" x2="{x:.1f}" y2="{py1}" '
                f'stroke="{_COLORS["constraint"]}" stroke-width="1.5" stroke-dasharray="5 4"/>'
            )
            spots = [
                (x + dx, ty, anchor)
                for ty in (py0 + 14, py1 - 6, (py0 + py1) / 2)
                for dx, anchor in ((-4, "end"), (4, "start"))
            ]
        else:
            y = sy(line.value)
            out.append(
                f'<line x1="{px0}" y1="{y:.1f}" x2="{px1}" y2="{y:.1f}" '
                f'stroke="{_COLORS["constraint"]}" stroke-width="1.5" stroke-dasharray="5 4"/>'
            )
            spots = [
                (tx, ty, anchor)
                for ty in (y - 5, y + 14)
                for tx, anchor in (
                    (px1 - 4, "end"),
                    (px0 + 4, "start"),
                    ((px0 + px1) / 2, "middle"),
                )
            ]
        width = len(line.label) * _CHAR_W
        fits = [spot for spot in spots if _label_box(*spot[:2], width, spot[2]).inside(area)]
        free = [
            spot
            for spot in fits
            if not any(_label_box(*spot[:2], width, spot[2]).overlaps(t) for t in taken)
        ]
        tx, ty, anchor = (free or fits or spots)[0]
        taken.append(_label_box(tx, ty, width, anchor))
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" '
            f'fill="{_COLORS["constraint"]}" stroke="#fff" stroke-width="3" paint-order="stroke">'
            f"{_e(line.label)}</text>"
        )

    front = _front_on_plot_axes([r for r in plotted if r.candidate in pareto_ids])
    if len(front) > 1:
        pts = " ".join(
            f"{sx(figure_value(r, 'latency_p90_ms') or 0.0):.1f},"
            f"{sy(figure_value(r, 'metric') or 0.0):.1f}"
            for r in front
        )
        out.append(
            f'<polyline points="{pts}" fill="none" stroke="{_COLORS["pareto"]}" '
            'stroke-width="1.8" stroke-linejoin="round" opacity="0.8"/>'
        )

    def draw_order(r: ResultRow) -> tuple[int, str]:
        if r.candidate in (chosen_id, miss_id):
            return (2, r.candidate)
        return (1 if r.candidate in pareto_ids else 0, r.candidate)

    for r in sorted(plotted, key=draw_order):
        x, y = coords[r.candidate]
        tip = f"<title>{_e(_tooltip(r))}</title>"
        if r.candidate in pareto_ids and r.candidate in feasible_ids:
            marker = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{_COLORS["pareto"]}"/>'
        elif r.candidate in pareto_ids:
            marker = (
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="#fff" '
                f'stroke="{_COLORS["pareto"]}" stroke-width="2"/>'
            )
        elif r.candidate in feasible_ids:
            marker = f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4.5" fill="{_COLORS["point"]}"/>'
        else:
            marker = (
                f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="#fff" '
                f'stroke="{_COLORS["infeasible"]}" stroke-width="1.5"/>'
            )
        if r.candidate == chosen_id:
            marker += (
                f'<circle class="chosen" cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" '
                f'stroke="{_COLORS["chosen"]}" stroke-width="2.5"/>'
            )
        elif r.candidate == miss_id:
            marker += (
                f'<circle class="closest-miss" cx="{x:.1f}" cy="{y:.1f}" r="9" fill="none" '
                f'stroke="{_COLORS["constraint"]}" stroke-width="1.8" stroke-dasharray="3 2"/>'
            )
        out.append(f'<g class="point" data-candidate="{_e(r.candidate)}">{tip}{marker}</g>')

    # Labels: chosen first, then the front, then the rest, so crowding hides the least useful ones.
    hidden: list[str] = []
    for r in sorted(plotted, key=lambda r: (-draw_order(r)[0], r.candidate)):
        x, y = coords[r.candidate]
        suffix = {chosen_id: " (chosen)", miss_id: " (closest miss)"}.get(r.candidate, "")
        text = r.candidate + suffix
        spot = _place_label(x, y, text, taken, area)
        if spot is None and suffix:
            text = r.candidate
            spot = _place_label(x, y, text, taken, area)
        if spot is None:
            hidden.append(r.candidate)
            continue
        tx, ty, anchor = spot
        weight = ' font-weight="bold"' if r.candidate in (chosen_id, miss_id) else ""
        color = {chosen_id: _COLORS["chosen"], miss_id: _COLORS["constraint"]}.get(
            r.candidate, "#333"
        )
        # A white halo keeps a label readable where the front or a grid line runs under it.
        out.append(
            f'<text x="{tx:.1f}" y="{ty:.1f}" text-anchor="{anchor}" fill="{color}"{weight} '
            f'stroke="#fff" stroke-width="3" paint-order="stroke">{_e(text)}</text>'
        )

    notes: list[str] = []
    if hidden:
        shown = ", ".join(hidden[:8]) + (f" and {len(hidden) - 8} more" if len(hidden) > 8 else "")
        notes.append(f"unlabelled (crowded, hover for details): {shown}")
    if off_chart:
        notes.append("off the chart: " + ", ".join(line.label for line in off_chart))
    if notes:
        out.append(
            f'<text x="{px0}" y="{_H - 1}" fill="#666" font-size="10">{_e("; ".join(notes))}</text>'
        )
    out.append("</svg>")
    return "".join(out)
