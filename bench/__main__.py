"""Every benchmark, then one table: each goal next to its measured ratio and pass/miss.

    python -m bench [--full] [--only transfer,footprint] [--out-dir DIR]

Quick mode (the default, ``make bench``) runs each benchmark's small settings in a few minutes and
writes its JSON under ``bench/results/quick/``; ``--full`` (``make bench-full``) runs the settings
the figures of docs/benchmarks.md come from and writes ``bench/results/*.json``. Each benchmark runs in its own
process, so one that fails is reported as failed and the others still run; the exit code is 1 when
any benchmark failed, 0 otherwise (a missed goal is a measurement, not a failure).
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from bench.goals import GoalRow, fmt_ratio

RESULTS = Path("bench/results")


@dataclass(frozen=True)
class Bench:
    name: str  # the module bench.<name>, which defines goal_rows(report)
    quick: tuple[str, ...]
    full: tuple[str, ...] = ()
    has_goals: bool = True


BENCHES: tuple[Bench, ...] = (
    Bench("transfer", ("--quick",)),
    Bench("footprint", ()),
    Bench("runtime_fidelity", ("--quick",)),
    Bench("fleet", ("--quick",), ("--boards", "1000", "--runs", "3")),
    Bench(
        "faults",
        ("--flips", "100", "--transfers", "3", "--kills", "3", "--fuzz-examples", "200"),
        ("--transfers", "20", "--kills", "20"),
    ),
    # Quick: one architecture (each takes minutes to train here); --full runs all five.
    Bench("models", ("--quick", "--models", "resnet18"), ("--compact", "--epoch-scale", "0.5")),
    Bench("uploads", ()),
    # Quick: one architecture, a few trials (the search's predictor is blind then: no other
    # architecture's results); --full runs three, the figures of docs/search.md.
    Bench("search", ("--quick",), ()),
    Bench("compression", ("--quick",), (), has_goals=False),
    Bench("scoring", ("--sentences", "200"), (), has_goals=False),
)


def run(bench: Bench, full: bool, out_dir: Path) -> tuple[list[GoalRow], float, str | None]:
    out = out_dir / f"{bench.name}.json"
    args = bench.full if full else bench.quick
    command = [sys.executable, "-m", f"bench.{bench.name}", *args, "--out", str(out)]
    print(f"\n$ {' '.join(command[2:])}", flush=True)
    started = time.monotonic()
    done = subprocess.run(command, check=False)
    seconds = time.monotonic() - started
    if done.returncode != 0:
        return [], seconds, f"exit code {done.returncode}"
    rows, _, error = tabulate(bench, out_dir)
    return rows, seconds, error


def markdown(rows: list[GoalRow], failed: dict[str, str]) -> str:
    lines = [
        "| bench | measure | edgetailor | baseline, same run | ratio | goal | result |",
        "| --- | --- | --- | --- | ---: | --- | --- |",
    ]
    for r in rows:
        result = {"MISS": "**MISS**"}.get(r.result, r.result)
        cells = [r.bench, r.measure, r.measured, r.baseline, fmt_ratio(r.ratio), r.goal, result]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    lines += [
        f"| {name} | benchmark failed | {error} | | | | FAILED |" for name, error in failed.items()
    ]
    return "\n".join(lines)


def tabulate(bench: Bench, out_dir: Path) -> tuple[list[GoalRow], float, str | None]:
    """The goal rows of the report a run of ``bench`` left in ``out_dir``."""
    out = out_dir / f"{bench.name}.json"
    if not out.is_file():
        return [], 0.0, f"no {out} yet"
    if not bench.has_goals:
        return [], 0.0, None
    module = importlib.import_module(f"bench.{bench.name}")
    return module.goal_rows(json.loads(out.read_text())), 0.0, None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--full", action="store_true", help="the settings docs/benchmarks.md quotes (long)"
    )
    parser.add_argument(
        "--only", default="", help="comma list of: " + ",".join(b.name for b in BENCHES)
    )
    parser.add_argument("--out-dir", type=Path, default=None)
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    parser.add_argument(
        "--from-results",
        action="store_true",
        help="run nothing: tabulate the JSON the last runs left in the output folder",
    )
    args = parser.parse_args(argv)
    only = {n for n in args.only.split(",") if n}
    unknown = only - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    out_dir = args.out_dir or (RESULTS if args.full else RESULTS / "quick")
    out_dir.mkdir(parents=True, exist_ok=True)
    rows: list[GoalRow] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    for bench in BENCHES:
        if only and bench.name not in only:
            continue
        if args.from_results:
            bench_rows, timings[bench.name], error = tabulate(bench, out_dir)
        else:
            bench_rows, timings[bench.name], error = run(bench, args.full, out_dir)
        rows += bench_rows
        if error:
            failed[bench.name] = error
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"make bench ({'full' if args.full else 'quick'}): goals, measured in one run each"
    )
    for column in (
        "bench",
        "measure",
        "edgetailor",
        "baseline, same run",
        "ratio",
        "goal",
        "result",
    ):
        table.add_column(column, justify="right" if column in ("ratio", "result") else "left")
    for row in rows:
        table.add_row(row.bench, row.measure, row.measured, row.baseline, fmt_ratio(row.ratio),
                      row.goal, row.result)  # fmt: skip
    for name, error in failed.items():
        table.add_row(name, "benchmark failed", error, "", "", "", "FAILED")
    if args.markdown:
        print(markdown(rows, failed))
    else:
        Console(width=220).print(table)
    summary = {
        "mode": "full" if args.full else "quick",
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "failed": failed,
        "rows": [r.to_json() for r in rows],
    }
    if not args.from_results:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    met = sum(r.met is True for r in rows)
    missed = sum(r.met is False for r in rows)
    print(f"{met} goals met, {missed} missed, {len(failed)} benchmarks failed; "
          f"{sum(timings.values()):.0f} s; written to {out_dir}/")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
