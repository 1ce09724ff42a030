"""Campaign reports: the HTML page (Jinja2 templates, host.report.page) and the Pareto plot as
SVG (host.report.plot), which the dashboard draws too."""

from __future__ import annotations

from host.report.page import (
    device_panels,
    device_panels_html,
    json_safe,
    load_results,
    report_data,
    write_report,
)
from host.report.plot import nice_ticks, pareto_svg

__all__ = [
    "device_panels",
    "device_panels_html",
    "json_safe",
    "load_results",
    "nice_ticks",
    "pareto_svg",
    "report_data",
    "write_report",
]
