"""The campaign report: one SVG per device, the choice marked, user text escaped, results.json."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import pytest

from host.report import load_results, nice_ticks, pareto_svg, write_report
from host.select import ResultRow, select
from shared.errors import ConfigError

SVG_NS = "{http://www.w3.org/2000/svg}"
HOSTILE = '<script>alert("x")</script>'


def row(
    candidate: str,
    device: str,
    metric_value: float,
    p90: float,
    *,
    recipe: str | None = None,
    rss: float = 50.0,
) -> ResultRow:
    return ResultRow(
        candidate=candidate,
        device=device,
        recipe=recipe or f"recipe {candidate}",
        format="tflite",
        precision="int8",
        size_bytes=2_000_000,
        latency_ms={"p50": p90 * 0.8, "p90": p90, "p99": p90 * 1.3},
        peak_rss_mb=rss,
        metric="accuracy",
        metric_value=metric_value,
        baseline_metric=0.95,
    )


CAMPAIGN = {
    "id": "cmp-42",
    "model": "builtin:tiny_cnn",
    "data": "builtin:digits",
    "constraints": ["latency_p90_ms<=20", "accuracy_drop<=0.02"],
    "created_at": "2024-06-01T10:00:00Z",
}


@pytest.fixture(scope="module")
def table() -> list[ResultRow]:
    return [
        row("c1", "pi4", 0.94, 12.0),
        row("c2", "pi4", 0.93, 8.0),
        row("c3", "pi4", 0.95, 25.0, recipe=HOSTILE),
        row("c4", "pi4", 0.90, 9.0),  # dominated by c2, breaks the drop bound
        ResultRow.failed(candidate="c5", device="pi4", error="<b>segfault</b> in delegate"),
        row("c1", "jetson", 0.94, 4.0),
        row("c2", "jetson", 0.93, 3.0),
        row("c1", "pi-zero", 0.94, 60.0),
        row("c2", "pi-zero", 0.93, 41.0),
    ]


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory, table: list[ResultRow]) -> tuple[Path, str]:
    selections = select(table, CAMPAIGN["constraints"])
    out = tmp_path_factory.mktemp("report")
    index = write_report(out, CAMPAIGN, table, selections)
    return index, index.read_text(encoding="utf-8")


def svg_title(svg: ET.Element) -> str:
    title = svg.find(f"{SVG_NS}title")
    return "" if title is None else title.text or ""


def svgs(page: str) -> list[ET.Element]:
    return [ET.fromstring(m) for m in re.findall(r"<svg\b.*?</svg>", page, flags=re.DOTALL)]


def point_groups(svg: ET.Element) -> dict[str, ET.Element]:
    return {
        g.get("data-candidate", ""): g for g in svg.iter(f"{SVG_NS}g") if g.get("class") == "point"
    }


class _TagCollector(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)


def test_report_is_written_as_index_html_next_to_results_json(report: tuple[Path, str]) -> None:
    index, page = report
    assert index.name == "index.html"
    assert (index.parent / "results.json").is_file()
    assert page.startswith("<!DOCTYPE html>")


def test_page_is_self_contained_without_scripts_or_remote_resources(
    report: tuple[Path, str],
) -> None:
    _, page = report
    parser = _TagCollector()
    parser.feed(page)
    assert "script" not in parser.tags
    assert "link" not in parser.tags
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "<style>" in page


def test_header_names_campaign_model_data_constraints_and_date(report: tuple[Path, str]) -> None:
    _, page = report
    for text in ("cmp-42", "builtin:tiny_cnn", "builtin:digits", "2024-06-01T10:00:00Z"):
        assert text in page
    assert "latency_p90_ms&lt;=20, accuracy_drop&lt;=0.02" in page


def test_there_is_one_well_formed_svg_plot_per_device(report: tuple[Path, str]) -> None:
    _, page = report
    plots = svgs(page)
    assert len(plots) == 3
    titles = sorted(svg_title(svg) for svg in plots)
    assert [t.split(":")[0] for t in titles] == ["jetson", "pi-zero", "pi4"]


def test_chosen_candidate_is_ringed_in_its_plot_and_marked_in_the_table(
    report: tuple[Path, str],
) -> None:
    _, page = report
    pi4 = next(s for s in svgs(page) if svg_title(s).startswith("pi4"))
    groups = point_groups(pi4)
    assert set(groups) == {"c1", "c2", "c3", "c4"}  # the failed c5 has nothing to plot
    ringed = [
        cand
        for cand, g in groups.items()
        if any(c.get("class") == "chosen" for c in g.iter(f"{SVG_NS}circle"))
    ]
    assert ringed == ["c1"]
    labels = [t.text for t in pi4.iter(f"{SVG_NS}text")]
    assert "c1 (chosen)" in labels
    assert re.search(r'<tr class="chosen"><td>c1<span class="badge chosen">chosen</span>', page)


def test_each_point_carries_a_tooltip_with_its_figures(report: tuple[Path, str]) -> None:
    _, page = report
    jetson = next(s for s in svgs(page) if svg_title(s).startswith("jet"))
    tip = point_groups(jetson)["c2"].find(f"{SVG_NS}title")
    assert tip is not None and "p90 3.00 ms" in (tip.text or "")
    assert "accuracy 0.93" in (tip.text or "")


def test_constraint_lines_are_drawn_where_they_map_to_an_axis(report: tuple[Path, str]) -> None:
    _, page = report
    pi4 = next(s for s in svgs(page) if svg_title(s).startswith("pi4"))
    texts = [t.text for t in pi4.iter(f"{SVG_NS}text")]
    assert "latency_p90_ms<=20" in texts
    assert "accuracy_drop<=0.02" in texts
    assert "p90 latency (ms)" in texts


def test_device_without_a_feasible_candidate_shows_its_closest_miss(
    report: tuple[Path, str],
) -> None:
    _, page = report
    zero = next(s for s in svgs(page) if svg_title(s).startswith("pi-z"))
    assert not any(c.get("class") == "chosen" for c in zero.iter(f"{SVG_NS}circle"))
    missed = [
        cand
        for cand, g in point_groups(zero).items()
        if any(c.get("class") == "closest-miss" for c in g.iter(f"{SVG_NS}circle"))
    ]
    assert missed == ["c2"]
    assert "none feasible" in page


def test_user_text_is_escaped_and_renders_as_text(report: tuple[Path, str]) -> None:
    _, page = report
    assert HOSTILE not in page
    assert "<b>segfault</b>" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in page
    assert "&lt;b&gt;segfault&lt;/b&gt; in delegate" in page
    # The tooltip inside the SVG is escaped as well: the SVG still parses and keeps the text.
    pi4 = next(s for s in svgs(page) if svg_title(s).startswith("pi4"))
    tip = point_groups(pi4)["c3"].find(f"{SVG_NS}title")
    assert tip is not None and HOSTILE in (tip.text or "")


def test_results_json_holds_rows_and_selections(report: tuple[Path, str]) -> None:
    index, _ = report
    data = json.loads((index.parent / "results.json").read_text(encoding="utf-8"))
    assert data["campaign"]["id"] == "cmp-42"
    assert len(data["rows"]) == 9
    assert data["selections"]["pi4"]["chosen"] == "c1"
    assert data["selections"]["jetson"]["chosen"] == "c1"
    assert data["selections"]["pi-zero"]["chosen"] is None
    assert data["selections"]["pi-zero"]["closest_miss"]["candidate"] == "c2"
    failed = next(r for r in data["rows"] if r["candidate"] == "c5")
    assert failed["status"] == "failed" and failed["metric_value"] is None


def test_a_device_whose_candidates_all_failed_still_gets_its_plot_panel(tmp_path: Path) -> None:
    rows = [ResultRow.failed(candidate="a", device="dead", error="no runtime")]
    index = write_report(tmp_path, {"id": "x"}, rows, select(rows))
    page = index.read_text(encoding="utf-8")
    assert len(svgs(page)) == 1
    assert "no successful measurements to plot" in page


def test_crowded_points_keep_every_tooltip_and_name_the_unlabelled_ones() -> None:
    rows = [row(f"cand{i:02d}", "pi4", 0.9 + i * 1e-5, 10.0 + i * 1e-3) for i in range(28)]
    # Two far points set the scale, so the 28 above land on (nearly) one spot.
    rows += [row("far_fast", "pi4", 0.5, 1.0), row("far_good", "pi4", 0.99, 50.0)]
    sel = select(rows)["pi4"]
    svg = ET.fromstring(pareto_svg("pi4", rows, sel))
    assert len(point_groups(svg)) == 30
    texts = " ".join(t.text or "" for t in svg.iter(f"{SVG_NS}text"))
    assert "unlabelled (crowded, hover for details)" in texts


def test_labels_placed_on_a_crowded_plot_do_not_overlap_each_other() -> None:
    rows = [row(f"c{i}", "pi4", 0.90 + (i % 5) * 0.004, 5.0 + (i // 5) * 2.0) for i in range(25)]
    svg = ET.fromstring(pareto_svg("pi4", rows, select(rows)["pi4"]))
    boxes = []
    for t in svg.iter(f"{SVG_NS}text"):
        if t.get("stroke") != "#fff" or t.get("fill") == "#c0392b":
            continue  # only point labels carry the halo and a non-constraint colour
        x, y, w = float(t.get("x", 0)), float(t.get("y", 0)), len(t.text or "") * 6.4
        x0 = {"start": x, "end": x - w}.get(t.get("text-anchor", ""), x - w / 2)
        boxes.append((x0, y - 8.8, x0 + w, y + 2.75))
    assert len(boxes) >= 10
    for i, a in enumerate(boxes):
        for b in boxes[i + 1 :]:
            assert a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1], (a, b)


@pytest.mark.parametrize(
    ("lo", "hi", "expected"),
    [(0, 10, [0, 2, 4, 6, 8, 10]), (0.91, 0.96, [0.91, 0.92, 0.93, 0.94, 0.95, 0.96])],
)
def test_axis_ticks_fall_on_round_numbers(lo: float, hi: float, expected: list[float]) -> None:
    assert nice_ticks(lo, hi) == pytest.approx(expected)


def test_the_drawn_front_joins_only_rows_optimal_on_the_plotted_axes() -> None:
    rows = [
        row("fast", "pi4", 0.90, 5.0),
        row("good", "pi4", 0.95, 10.0),
        row("lean", "pi4", 0.85, 8.0, rss=10.0),  # on the front only through its memory
    ]
    sel = select(rows)["pi4"]
    assert {r.candidate for r in sel.pareto} == {"fast", "good", "lean"}
    svg = ET.fromstring(pareto_svg("pi4", rows, sel))
    (polyline,) = list(svg.iter(f"{SVG_NS}polyline"))
    points = [tuple(map(float, p.split(","))) for p in (polyline.get("points") or "").split()]
    assert len(points) == 2 and points[0][0] < points[1][0] and points[0][1] > points[1][1]


def test_results_json_reads_back_into_rows_that_select_the_same_way(
    report: tuple[Path, str], table: list[ResultRow]
) -> None:
    index, _ = report
    campaign, rows = load_results(index.parent)
    assert campaign["id"] == "cmp-42"
    assert [r.candidate for r in rows] == [r.candidate for r in table]
    again = select(rows, campaign["constraints"])
    assert {d: s.chosen_id for d, s in again.items()} == {
        "jetson": "c1",
        "pi-zero": None,
        "pi4": "c1",
    }


def test_reading_results_from_a_missing_or_foreign_file_says_what_to_give(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="give a report folder"):
        load_results(tmp_path)
    (tmp_path / "results.json").write_text('{"something": "else"}', encoding="utf-8")
    with pytest.raises(ConfigError, match="not an edgetailor results.json"):
        load_results(tmp_path)
