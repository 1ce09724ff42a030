"""``edgetailor compress``: turn one model into a compressed, exported, measured candidate.

    edgetailor compress --model builtin:digits_cnn --data builtin:digits --recipe prune50_ft_int8 --out out/
    edgetailor compress --list

Progress (training epochs, export) goes to stderr with rich; the result table (or ``--json``) to
stdout, and nothing else: what converters print is moved off stdout (host.cli.output).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from host.cli.main import app
from host.cli.output import library_chatter, wide_console
from shared.errors import ConfigError

TASK_HELP = "classification, embedding or regression (default: the model factory's, else a guess)"
METRIC_HELP = (
    "your metric: pkg.mod:fn or file.py:fn, fn(outputs, labels_or_reference) -> float, "
    "higher is better"
)
EVAL_SAMPLES_HELP = "eval set: the test split, at most this many samples"

logger = logging.getLogger(__name__)


def _list_table() -> tuple[Table, Table, Table]:
    from host.compress import NAMED_RECIPES, SEARCH_SPACES, techniques_summary

    techniques = Table(title="techniques")
    for column in ("name", "v", "what it does", "fields (defaults)"):
        techniques.add_column(column)
    for name, version, summary, fields in techniques_summary():
        techniques.add_row(name, str(version), summary, ", ".join(fields) or "-")
    recipes = Table(title="named recipes (--recipe NAME)")
    recipes.add_column("name")
    recipes.add_column("steps")
    for name, recipe in NAMED_RECIPES.items():
        recipes.add_row(name, recipe.describe())
    spaces = Table(title="search spaces (campaigns)")
    for column in ("name", "recipes", "description"):
        spaces.add_column(column)
    for name, space in SEARCH_SPACES.items():
        spaces.add_row(name, str(len(space)), space.description)
    return techniques, recipes, spaces


def _list_json() -> dict[str, Any]:
    from host.compress import NAMED_RECIPES, SEARCH_SPACES, techniques_summary

    return {
        "techniques": [
            {"name": n, "version": v, "summary": s, "fields": f}
            for n, v, s, f in techniques_summary()
        ],
        "recipes": {name: r.to_list() for name, r in NAMED_RECIPES.items()},
        "search_spaces": {name: [r.name for r in s.expand()] for name, s in SEARCH_SPACES.items()},
    }


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def result_table(result: Any) -> Table:
    table = Table(title=f"{result.bundle.name}: {result.recipe.describe()}")
    for column in (
        "format",
        "precision",
        "file",
        "bytes",
        "params",
        "MACs",
        "metric (95% interval)",
        "latency ms",
    ):
        table.add_column(column)
    for artifact, entry in zip(result.artifacts, result.artifact_metrics, strict=True):
        latency = entry.get("latency", {})
        metrics = [entry, *([entry["user_metric"]] if entry.get("user_metric") else [])]
        table.add_row(
            artifact.manifest.format,
            artifact.manifest.precision,
            artifact.path.name[:16] + "...",
            str(entry["size_bytes"]),
            _fmt(result.metrics.get("params")),
            _fmt(result.metrics.get("macs")),
            "\n".join(metric_text(m) for m in metrics),
            _fmt(latency.get("p50_ms") if isinstance(latency, dict) else None, 3),
        )
    return table


def metric_text(entry: dict[str, Any]) -> str:
    """``accuracy 0.9778 [0.950, 0.990] n=270``."""
    interval = entry.get("metric_interval")
    shown = f"{entry.get('metric', '-')} {_fmt(entry.get('metric_value'))}"
    if interval and None not in interval:
        shown += f" [{interval[0]:.3f}, {interval[1]:.3f}]"
    if entry.get("eval_samples"):
        shown += f" n={entry['eval_samples']}"
    return shown


def steps_table(result: Any) -> Table:
    table = Table(title="steps")
    for column in ("step", "params", "seconds", "notes"):
        table.add_column(column)
    for record in result.steps:
        table.add_row(
            record.technique,
            f"{_fmt(record.params_before)} -> {_fmt(record.params_after)}",
            f"{record.seconds:.1f}",
            "\n".join(record.notes),
        )
    return table


@app.command("compress")
def compress_cmd(
    model: Annotated[
        str | None,
        typer.Option("--model", help="builtin:NAME, path/file.py:factory or pkg.module:factory"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="builtin:digits, file.npz, an image folder or module:factory"),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option("--recipe", help="a named recipe (see --list) or a recipe .json file"),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="directory for artifacts, manifests and eval.npz"),
    ] = None,
    formats: Annotated[
        str, typer.Option("--formats", help="comma-separated: tflite,onnx")
    ] = "tflite",
    latency_runs: Annotated[
        int,
        typer.Option(
            "--latency-runs", help="measure host latency of each file with this many runs (0: skip)"
        ),
    ] = 0,
    threads: Annotated[int, typer.Option("--threads", help="runtime threads for latency")] = 1,
    weights: Annotated[
        Path | None,
        typer.Option(
            "--weights", help="state_dict (.pt) to load into the model before compressing"
        ),
    ] = None,
    pretrain_epochs: Annotated[
        int,
        typer.Option(
            "--pretrain-epochs", help="train the model on --data first (zoo models start untrained)"
        ),
    ] = 0,
    seed: Annotated[int, typer.Option("--seed", help="seed for training steps")] = 0,
    task: Annotated[str | None, typer.Option("--task", help=TASK_HELP)] = None,
    metric: Annotated[str | None, typer.Option("--metric", help=METRIC_HELP)] = None,
    eval_samples: Annotated[
        int, typer.Option("--eval-samples", min=1, help=EVAL_SAMPLES_HELP)
    ] = 1000,
    list_all: Annotated[
        bool, typer.Option("--list", help="list techniques, named recipes, search spaces")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of tables")] = False,
) -> None:
    """Compress a model with a recipe, export it, and measure the exported file on this host."""
    out_console = wide_console()
    if list_all:
        if as_json:
            typer.echo(json.dumps(_list_json(), indent=2))
        else:
            for table in _list_table():
                out_console.print(table)
        return
    missing = [
        flag
        for flag, value in (
            ("--model", model),
            ("--data", data),
            ("--recipe", recipe),
            ("--out", out),
        )
        if value is None
    ]
    if missing:
        raise ConfigError(
            f"compress needs {', '.join(missing)} (or --list to see what is available)"
        )
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from host.compress import compress

    chosen = [f.strip() for f in formats.split(",") if f.strip()]
    err_console = Console(stderr=True)
    with (
        library_chatter(),
        Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=as_json,
        ) as progress,
    ):
        bar = progress.add_task("compressing", total=1.0)

        def report(label: str, fraction: float) -> None:
            progress.update(bar, description=label, completed=fraction)

        result = compress(
            model,
            data,
            recipe,
            out,
            formats=chosen,
            progress=report,
            seed=seed,
            latency_runs=latency_runs,
            threads=threads,
            weights=weights,
            pretrain_epochs=pretrain_epochs,
            task=task,
            metric=metric,
            eval_samples=eval_samples,
        )
    for line in ([result.task_note] if result.task_note else []) + [
        f"warning: {w}" for w in result.eval_warnings
    ]:
        err_console.print(line, markup=False, highlight=False)
    if as_json:
        sys.stdout.write(json.dumps(result.to_dict(), indent=2, default=str) + "\n")
        return
    out_console.print(steps_table(result))
    out_console.print(result_table(result))
