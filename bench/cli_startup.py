"""How long ``edgetailor --help`` takes: the CLI's startup, which every command pays.

    python -m bench.cli_startup --runs 5 [--compare DIR]

Runs ``edgetailor --help`` (this checkout's code: PYTHONPATH points at it) ``--runs`` times, each in
a fresh process, and reports the median wall time. With ``--compare DIR`` (another checkout of the
repository, e.g. ``git archive <commit> | tar -x -C DIR``) both run side by side, interleaved, and
the table shows the ratio. Written to ``bench/results/cli_startup.json`` (``--out`` to change it).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = "from host.cli.main import main; main()"


def time_help(source: Path) -> float:
    env = {**os.environ, "PYTHONPATH": str(source)}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-c", COMMAND, "--help"],
        env=env,
        cwd=source,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.cli_startup", description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--compare", type=Path, help="another checkout to time side by side")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "cli_startup.json")
    args = parser.parse_args(argv)
    sources = {"this checkout": ROOT}
    if args.compare is not None:
        sources["compared"] = args.compare.resolve()
    samples: dict[str, list[float]] = {name: [] for name in sources}
    time_help(ROOT)  # warm the file cache once
    for _ in range(args.runs):
        for name, source in sources.items():
            samples[name].append(time_help(source))
    medians = {name: statistics.median(values) for name, values in samples.items()}
    print("| code | median s | runs (s) |")
    print("| --- | ---: | --- |")
    for name, values in samples.items():
        print(f"| {name} | {medians[name]:.3f} | {', '.join(f'{v:.3f}' for v in values)} |")
    doc = {"command": "edgetailor --help", "runs": args.runs, "samples": samples,
           "medians": medians, "sources": {k: ("this checkout" if v == ROOT else "compared") for k, v in sources.items()}}  # fmt: skip
    if args.compare is not None:
        ratio = medians["this checkout"] / medians["compared"]
        doc["ratio"] = ratio
        print(f"ratio (this checkout / compared): {ratio:.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
