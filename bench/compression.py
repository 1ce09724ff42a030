"""Per-technique compression table on the digits CNN, every ratio against the fp32 baseline of the
same run: parameters, MACs, exported file size, host latency of the exported file (same runtime,
same thread count) and test accuracy of the exported file.

    python -m bench.compression [--out bench/results/compression.json] [--quick] [--only NAME ...]

It also trains the distillation student once without the teacher, so the table shows by how much
distillation helps (or does not).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import platform
import time
from pathlib import Path
from typing import Any

from host.compress import (
    ChannelPrune,
    Distill,
    FineTune,
    Fp16,
    Int8Dynamic,
    Int8Full,
    LowRank,
    QuantAwareTraining,
    Recipe,
    UnstructuredPrune,
    compress,
)

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/compression.json")


def bench_recipes(scale: float) -> list[Recipe]:
    """The recipes of the table; ``scale`` multiplies every epoch count (quick runs use < 1)."""

    def ep(n: int) -> int:
        return max(1, round(n * scale))

    return [
        Recipe.of(name="baseline"),
        Recipe.of(Fp16(), name="fp16"),
        Recipe.of(Int8Dynamic(), name="int8_dynamic"),
        Recipe.of(Int8Full(), name="int8"),
        Recipe.of(QuantAwareTraining(epochs=ep(3)), name="qat"),
        Recipe.of(UnstructuredPrune(amount=0.5), name="sparse50"),
        Recipe.of(UnstructuredPrune(amount=0.5), FineTune(epochs=ep(5)), name="sparse50_ft"),
        Recipe.of(ChannelPrune(ratio=0.5), name="prune50"),
        Recipe.of(ChannelPrune(ratio=0.5), FineTune(epochs=ep(10)), name="prune50_ft"),
        Recipe.of(
            ChannelPrune(ratio=0.5), FineTune(epochs=ep(10)), Int8Full(), name="prune50_ft_int8"
        ),
        Recipe.of(LowRank(ratio=0.5), FineTune(epochs=ep(8)), name="lowrank50_ft"),
        Recipe.of(LowRank(ratio=0.5), FineTune(epochs=ep(8)), Fp16(), name="lowrank50_ft_fp16"),
        Recipe.of(LowRank(method="tucker2", ratio=0.5), FineTune(epochs=ep(8)), name="tucker50_ft"),
        Recipe.of(Distill(student=0.5, epochs=ep(20)), name="distill_half"),
        Recipe.of(Distill(student=0.5, epochs=ep(20)), Int8Full(), name="distill_half_int8"),
    ]


def _row(name: str, description: str, result: Any) -> dict[str, Any]:
    entry = result.artifact_metrics[0]
    return {
        "name": name,
        "recipe": description,
        "precision": entry["precision"],
        "params": result.metrics["params"],
        "macs": result.metrics["macs"],
        "size_bytes": entry["size_bytes"],
        "latency_ms": entry["latency"]["p50_ms"],
        "accuracy": entry["metric_value"],
        "compress_seconds": result.metrics["compress_seconds"],
        "notes": [n for s in result.steps for n in s.notes],
    }


def run_bench(
    out: Path | None = DEFAULT_OUT,
    *,
    scale: float = 1.0,
    baseline_epochs: int = 20,
    only: list[str] | None = None,
    threads: int = 1,
    latency_runs: int = 200,
    work_dir: Path | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Run every recipe on one trained digits CNN; returns (and writes) the table as JSON."""
    import tempfile

    from host.compress.api import prepare_baseline
    from host.data import load_data
    from host.models import load_model
    from host.train import fit

    data = load_data("builtin:digits", seed=0)
    started = time.perf_counter()
    teacher = prepare_baseline(
        load_model("builtin:digits_cnn"),
        data,
        epochs=max(1, baseline_epochs),
        lr=3e-3,
        seed=0,
    )
    recipes = [
        r for r in bench_recipes(scale) if only is None or r.name in only or r.name == "baseline"
    ]
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        artifacts_dir = work_dir or Path(tmp)
        for recipe in recipes:
            if progress is not None:
                progress(recipe.name)
            result = compress(
                teacher, data, recipe, artifacts_dir, latency_runs=latency_runs, threads=threads
            )
            rows.append(_row(recipe.name, recipe.describe(), result))
        distill = next((r for r in recipes if r.name == "distill_half"), None)
        if distill is not None:
            # The same student, the same epochs and learning rate, trained on labels only.
            step = distill.steps[0]
            student = load_model("builtin:digits_cnn", width=0.5)
            fit(student.module, data, epochs=step.epochs, lr=step.lr, seed=0)
            student = dataclasses.replace(
                student, module=copy.deepcopy(student.module).cpu().eval()
            )
            result = compress(
                student, data, "baseline", artifacts_dir, latency_runs=latency_runs, threads=threads
            )
            rows.append(
                _row(
                    "student_no_teacher",
                    f"half-width student, {step.epochs} epochs, labels only",
                    result,
                )
            )
    base = rows[0]
    for row in rows:
        row["size_ratio"] = base["size_bytes"] / row["size_bytes"]
        row["macs_ratio"] = base["macs"] / row["macs"] if row["macs"] else None
        row["params_ratio"] = base["params"] / row["params"]
        row["speedup"] = base["latency_ms"] / row["latency_ms"] if row["latency_ms"] else None
        row["accuracy_delta_points"] = 100 * (row["accuracy"] - base["accuracy"])
    by_name = {r["name"]: r for r in rows}
    summary: dict[str, Any] = {}
    if "distill_half" in by_name and "student_no_teacher" in by_name:
        summary["distillation_gain_points"] = 100 * (
            by_name["distill_half"]["accuracy"] - by_name["student_no_teacher"]["accuracy"]
        )
    report = {
        "model": "builtin:digits_cnn",
        "data": "builtin:digits",
        "host": {
            "machine": platform.machine(),
            "python": platform.python_version(),
            "threads": threads,
            "latency_runs": latency_runs,
            "runtime": "ai_edge_litert",
        },
        "epoch_scale": scale,
        "baseline_epochs": baseline_epochs,
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "summary": summary,
    }
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2))
    return report


def render(report: dict[str, Any]) -> Any:
    from rich.table import Table

    table = Table(
        title=f"compression of {report['model']} on {report['data']} "
        f"(latency: {report['host']['runtime']}, {report['host']['threads']} thread)"
    )
    for column in (
        "technique",
        "prec",
        "params",
        "MACs",
        "file B",
        "size x",
        "MACs x",
        "latency ms",
        "speedup",
        "accuracy",
        "d pts",
    ):
        table.add_column(column, justify="left" if column == "technique" else "right")

    def x(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}x"

    for row in report["rows"]:
        table.add_row(
            row["name"],
            row["precision"],
            str(row["params"]),
            str(row["macs"]),
            str(row["size_bytes"]),
            x(row["size_ratio"]),
            x(row["macs_ratio"]),
            f"{row['latency_ms']:.4f}",
            x(row["speedup"]),
            f"{row['accuracy']:.4f}",
            f"{row['accuracy_delta_points']:+.1f}",
        )
    return table


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="a fifth of the epochs (smoke run)")
    parser.add_argument("--only", nargs="*", help="recipe names to run (the baseline always runs)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--latency-runs", type=int, default=200)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    console = Console(stderr=True)
    report = run_bench(
        args.out,
        scale=0.2 if args.quick else 1.0,
        baseline_epochs=5 if args.quick else 20,
        only=args.only,
        threads=args.threads,
        latency_runs=args.latency_runs,
        progress=lambda name: console.log(f"running {name}"),
    )
    Console(width=160).print(render(report))
    if "distillation_gain_points" in report["summary"]:
        Console().print(
            f"distillation vs same student without teacher: "
            f"{report['summary']['distillation_gain_points']:+.1f} points"
        )
    Console().print(f"written to {args.out}")


if __name__ == "__main__":
    main()
