"""The campaign report page: one self-contained HTML file (inline CSS and SVG, no JS) plus
results.json, rendered through the Jinja2 templates beside this module.

:func:`write_report` lays out, for a campaign, a header (campaign id, model, data, constraints,
date), the choice per device with its reason, and per device its Pareto plot (host.report.plot)
and results table. :func:`device_panels_html` renders the per-device part alone, which the
dashboard shows for a campaign. Templates autoescape: recipe names and errors come from user code
and device messages.

The figures a row shows are prepared here (:class:`ResultView`), the markup is in
``templates/device.html.j2``: a new figure is a field here, a header and a cell there.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from markupsafe import Markup

from host.errors import ConfigError
from host.report.plot import pareto_svg
from host.select import DeviceSelection, ResultRow, figure_value, format_value
from shared.fsutil import atomic_write

logger = logging.getLogger(__name__)

__all__ = [
    "DevicePanel",
    "ResultView",
    "device_panels",
    "device_panels_html",
    "eval_warnings_of",
    "json_safe",
    "load_results",
    "report_data",
    "write_report",
]

_MIB = 1024 * 1024


@cache
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("host.report", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=False,
    )


# --------------------------------------------------------------------------------------------------
# What the templates show.


@dataclass(frozen=True)
class Figure:
    """A number as shown, and the value a table sorts by (None: nothing to sort, sorts last)."""

    text: str
    value: float | None

    @classmethod
    def of(cls, value: float | None, unit: str = "") -> Figure:
        finite = value is not None and math.isfinite(value)
        return cls(format_value(value, unit), float(value) if finite else None)


def _metric_text(value: float | None, *, signed: bool = False) -> str:
    """Metrics with fixed decimals, so a column of accuracies lines up and 0.95 reads as 0.9500."""
    if value is None or not math.isfinite(value):
        return "n/a"
    if abs(value) >= 10:
        return format_value(value)
    text = f"{value:+.4f}" if signed else f"{value:.4f}"
    return text.replace("-", "\u2212")


@dataclass(frozen=True)
class ResultView:
    """One row of a device's results table: the row, its marks, and its figures as shown."""

    row: ResultRow
    chosen: bool
    pareto: bool
    breaks: tuple[str, ...]
    size: Figure
    p50: Figure
    p90: Figure
    p99: Figure
    peak_rss: Figure
    metric: Figure
    interval: str | None  # the metric's 95% interval, as shown
    delta: str | None  # change from the baseline, signed
    undecided: tuple[str, ...] = ()  # constraints its interval neither meets nor misses

    @property
    def css(self) -> str:
        return "chosen" if self.chosen else ("failed" if not self.row.ok else "")

    @classmethod
    def of(
        cls,
        r: ResultRow,
        selection: DeviceSelection | None,
        broken: tuple[str, ...],
        undecided: tuple[str, ...] = (),
    ) -> ResultView:
        chosen_id = selection.chosen_id if selection is not None else None
        pareto_ids = {p.candidate for p in selection.pareto} if selection is not None else set()
        metric_value = r.metric_value if r.ok else None
        delta = None
        if r.ok and r.metric_drop is not None and math.isfinite(r.metric_drop):
            delta = _metric_text(-r.metric_drop, signed=True)
        metric = Figure.of(metric_value)
        interval = None
        if r.ok and r.metric_interval is not None:
            lo, hi = r.metric_interval
            interval = f"[{_metric_text(lo)}, {_metric_text(hi)}]"
        return cls(
            row=r,
            chosen=r.candidate == chosen_id,
            pareto=r.candidate in pareto_ids,
            breaks=broken,
            size=Figure.of(r.size_bytes / _MIB if r.size_bytes else None, "MB"),
            p50=Figure.of(figure_value(r, "latency_p50_ms"), "ms"),
            p90=Figure.of(figure_value(r, "latency_p90_ms"), "ms"),
            p99=Figure.of(figure_value(r, "latency_p99_ms"), "ms"),
            peak_rss=Figure.of(figure_value(r, "peak_rss_mb"), "MB"),
            metric=Figure(_metric_text(metric_value), metric.value),
            interval=interval,
            delta=delta,
            undecided=undecided,
        )


def _result_views(rows: Sequence[ResultRow], selection: DeviceSelection | None) -> list[ResultView]:
    """The chosen row first, then the measured ones by metric (best first), then the failed."""
    chosen_id = selection.chosen_id if selection is not None else None
    broken: dict[str, list[str]] = {}
    undecided: dict[str, list[str]] = {}
    if selection is not None:
        for constraint, candidates in selection.excluded.items():
            for cand in candidates:
                broken.setdefault(cand, []).append(constraint)
        for constraint, candidates in selection.undecided.items():
            for cand in candidates:
                undecided.setdefault(cand, []).append(constraint)

    def order(r: ResultRow) -> tuple[Any, ...]:
        metric = figure_value(r, "metric")
        return (
            r.candidate != chosen_id,
            not r.ok,
            -(metric if metric is not None else -math.inf),
            figure_value(r, "latency_p90_ms") or math.inf,
            r.candidate,
        )

    return [
        ResultView.of(
            r,
            selection,
            tuple(broken.get(r.candidate, ())),
            tuple(undecided.get(r.candidate, ())),
        )
        for r in sorted(rows, key=order)
    ]


@dataclass(frozen=True)
class DevicePanel:
    """One device's section: its choice and reason, the Pareto plot, the results table."""

    device: str
    anchor: str
    selection: DeviceSelection | None
    metric_name: str
    plot: Markup
    results: list[ResultView] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return self.selection.reason if self.selection is not None else "not selected"

    @property
    def chosen(self) -> ResultRow | None:
        return self.selection.candidate if self.selection is not None else None

    @property
    def closest_miss(self) -> str | None:
        miss = self.selection.closest_miss if self.selection is not None else None
        return miss.row.candidate if miss is not None else None

    def figure(self, name: str, unit: str = "") -> str:
        """A figure of the chosen row as the summary table shows it."""
        row = self.chosen
        if row is None:
            return "–"
        if name == "metric":
            return _metric_text(row.metric_value)
        if name == "size_mb":
            return format_value(row.size_bytes / _MIB, unit)
        return format_value(figure_value(row, name), unit)


def _anchor(device: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in device)


def device_panels(
    rows: Sequence[ResultRow], selections: dict[str, DeviceSelection]
) -> list[DevicePanel]:
    devices = sorted({r.device for r in rows} | set(selections))
    by_device: dict[str, list[ResultRow]] = {d: [] for d in devices}
    for r in rows:
        by_device[r.device].append(r)
    panels = []
    for device in devices:
        device_rows = by_device[device]
        sel = selections.get(device)
        panels.append(
            DevicePanel(
                device=device,
                anchor=_anchor(device),
                selection=sel,
                metric_name=device_rows[0].metric if device_rows else "metric",
                # pareto_svg escapes everything it writes from the rows.
                plot=Markup(pareto_svg(device, device_rows, sel)),
                results=_result_views(device_rows, sel),
            )
        )
    return panels


def device_panels_html(rows: Sequence[ResultRow], selections: dict[str, DeviceSelection]) -> str:
    """The per-device sections of the report (plot and table), as the dashboard shows them."""
    template = _env().get_template("panels.html.j2")
    return template.render(panels=device_panels(rows, selections))


# --------------------------------------------------------------------------------------------------
# The page.

_RULE = (
    "quality constraints judged on 95% intervals: a candidate that meets them clearly wins over "
    "one that meets them on the point estimate only"
)


def _eval_text(campaign: dict[str, Any], rows: Sequence[ResultRow]) -> str:
    samples = campaign.get("eval_samples") or max((r.eval_samples for r in rows), default=0)
    return f"{samples} samples" if samples else "–"


def eval_warnings_of(campaign: dict[str, Any], rows: Sequence[ResultRow]) -> list[str]:
    """The campaign's eval-set warnings, and any a board added, each once."""
    seen: list[str] = []
    for warning in [*(campaign.get("eval_warnings") or []), *(w for r in rows for w in r.warnings)]:
        if warning not in seen:
            seen.append(warning)
    return seen


def _date_text(campaign: dict[str, Any]) -> str:
    for key in ("date", "finished_at", "created_at", "started_at"):
        value = campaign.get(key)
        if value is None:
            continue
        if isinstance(value, (int, float)):
            return dt.datetime.fromtimestamp(value, tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        if isinstance(value, dt.datetime):
            return value.isoformat(timespec="minutes")
        return str(value)
    return dt.datetime.now(tz=dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def _constraint_texts(
    campaign: dict[str, Any], selections: dict[str, DeviceSelection]
) -> list[str]:
    given = campaign.get("constraints")
    if isinstance(given, str):
        return [given] if given else []
    if isinstance(given, (list, tuple)):
        return [str(c) for c in given]
    for sel in selections.values():
        return [str(c) for c in sel.constraints]
    return []


def report_data(
    campaign: dict[str, Any], rows: Sequence[ResultRow], selections: dict[str, DeviceSelection]
) -> dict[str, Any]:
    """What results.json holds: the campaign, every row and every device's selection."""
    return {
        "campaign": json_safe(campaign),
        "rows": [r.to_dict() for r in rows],
        "selections": {device: sel.to_dict() for device, sel in selections.items()},
    }


def load_results(path: Path | str) -> tuple[dict[str, Any], list[ResultRow]]:
    """Read a results.json (or the folder holding it) back into the campaign dict and its rows.

    Selections are not read back: run :func:`host.select.select` again, possibly with other
    constraints, which is the point of keeping the rows.
    """
    file = Path(path)
    if file.is_dir():
        file = file / "results.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        campaign = data.get("campaign") or {}
        rows = [ResultRow.from_dict(item) for item in data["rows"]]
    except FileNotFoundError as exc:
        raise ConfigError(
            f"no results file at {file}: give a report folder or its results.json"
        ) from exc
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{file} is not an edgetailor results.json: {exc}") from exc
    return campaign, rows


def json_safe(value: Any) -> Any:
    """Non-finite floats become null (JSON has no NaN); other odd objects become their text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


def write_report(
    out_dir: Path | str,
    campaign: dict[str, Any],
    rows: list[ResultRow],
    selections: dict[str, DeviceSelection],
) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/results.json``; return the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    panels = device_panels(rows, selections)

    campaign_id = campaign.get("id") or campaign.get("campaign_id") or "unnamed"
    constraints = _constraint_texts(campaign, selections)
    objective = campaign.get("objective")
    if objective is None and selections:
        first = next(iter(selections.values()))
        objective = first.objective.name + (
            f" (ties within {first.objective.epsilon:g})" if first.objective.epsilon else ""
        )
    devices = len(panels)
    meta = [
        ("campaign", campaign_id),
        ("model", campaign.get("model", "–")),
        ("data", campaign.get("data", "–")),
        ("constraints", ", ".join(constraints) if constraints else "none"),
        ("objective", objective or "max_metric"),
        ("task", campaign.get("task") or "–"),
        ("eval set", _eval_text(campaign, rows)),
        ("selection", "point estimates (--strict)" if campaign.get("strict") else _RULE),
        ("date", _date_text(campaign)),
        (
            "candidates",
            f"{len({r.candidate for r in rows})} on {devices} device"
            + ("" if devices == 1 else "s"),
        ),
    ]
    page = (
        _env()
        .get_template("report.html.j2")
        .render(
            campaign_id=campaign_id,
            meta=meta,
            panels=panels,
            warnings=eval_warnings_of(campaign, rows),
        )
    )
    index = out / "index.html"
    atomic_write(index, page.encode("utf-8"))
    results = report_data(campaign, rows, selections)
    atomic_write(
        out / "results.json",
        json.dumps(results, indent=2, default=str, allow_nan=False).encode("utf-8"),
    )
    logger.info("report for campaign %s written to %s", campaign_id, index)
    return index
