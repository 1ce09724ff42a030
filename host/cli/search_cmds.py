"""``edgetailor search`` and ``edgetailor predict``.

    edgetailor search --model builtin:digits_cnn --data builtin:digits --pretrain-epochs 15 \\
        --devices pi-01,pi-02 --constraint "accuracy_drop<=0.02" \\
        --constraint "latency_p90_ms<=5@pi-01" --budget 6 --trials 24 --json
    edgetailor search --resume s-20250101-120000-ab12      # after a restart, or as a 2nd worker
    edgetailor predict --model out/<sha256>.tflite --device pi-01 --threads 2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from host.cli.connection import FLEET, Connection, JsonOpt, connection_options
from host.cli.main import app
from host.cli.output import library_chatter, wide_console
from shared.errors import ConfigError


def _split(text: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (text or "").split(",") if part.strip())


@app.command("search")
@connection_options(*FLEET, "signing_key")
def search_cmd(
    conn: Connection,
    model: Annotated[
        str | None, typer.Option("--model", help="builtin:NAME, file.py:factory, pkg.mod:factory")
    ] = None,
    data: Annotated[
        str | None, typer.Option("--data", help="builtin:digits, file.npz, image folder")
    ] = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="comma-separated device ids")
    ] = None,
    constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--constraint",
            help='e.g. "accuracy_drop<=0.02", "latency_p90_ms<=5@pi-01" (@DEVICE: that device only; repeatable)',
        ),
    ] = None,
    objective: Annotated[
        str, typer.Option("--objective", help="min_latency, max_metric, min_size, min_memory")
    ] = "min_latency",
    budget: Annotated[
        int,
        typer.Option(
            "--budget", min=1, help="board measurements per device, final checks included"
        ),
    ] = 8,
    trials: Annotated[
        int,
        typer.Option("--trials", min=1, help="candidates built and judged on the host per device"),
    ] = 24,
    sampler: Annotated[str, typer.Option("--sampler", help="tpe or nsga2")] = "tpe",
    runtimes: Annotated[
        str, typer.Option("--runtimes", help="runtimes to search: tflite,onnx")
    ] = "tflite",
    threads: Annotated[
        str | None,
        typer.Option("--threads", help="thread counts to search (default: 1 to the board's cores)"),
    ] = None,
    precisions: Annotated[
        str, typer.Option("--precisions", help="fp32,fp16,int8_dynamic,int8,int8_mixed")
    ] = "fp32,fp16,int8_dynamic,int8,int8_mixed",
    max_prune: Annotated[
        float, typer.Option("--max-prune", help="largest structured-pruning ratio (0: none)")
    ] = 0.7,
    students: Annotated[
        str | None, typer.Option("--students", help="distilled student widths to try, e.g. 0.5")
    ] = None,
    no_lowrank: Annotated[
        bool, typer.Option("--no-lowrank", help="leave low-rank factorization out")
    ] = False,
    recovery_epochs: Annotated[
        int, typer.Option("--recovery-epochs", min=0, help="short fine-tune per trial on the host")
    ] = 2,
    pretrain_epochs: Annotated[
        int, typer.Option("--pretrain-epochs", min=0, help="train the model on --data first")
    ] = 0,
    weights: Annotated[
        str | None, typer.Option("--weights", help="state_dict file of the model")
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", min=1, help="timed runs per board measurement")
    ] = 30,
    eval_samples: Annotated[
        int, typer.Option("--eval-samples", min=1, help="eval set size cap")
    ] = 1000,
    task: Annotated[
        str | None, typer.Option("--task", help="classification, embedding, regression")
    ] = None,
    search_id: Annotated[
        str | None,
        typer.Option("--search-id", help="name the search (same spec + id resumes or joins it)"),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            "--resume", help="continue (or join as another worker) the stored search with this id"
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option("--work-dir", help="artifacts (default $EDGETAILOR_HOME/searches/ID)"),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="also write the HTML report here")
    ] = None,
    compare: Annotated[
        str | None,
        typer.Option("--compare", help="campaign id whose named recipes the report shows beside"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Search per device for the variant that best meets its constraints, boards in the loop."""
    from host.campaign.spec import parse_threads
    from host.search import (
        SearchSpec,
        check_search_id,
        new_search_id,
        run_search,
        write_search_report,
    )
    from host.search.spec import default_work_root
    from host.search.store import SearchStore

    err = Console(stderr=True)
    with conn.store() as store:
        if resume is not None:
            stored = SearchStore(store).get_search(check_search_id(resume))
            if stored is None:
                raise ConfigError(f"no search {resume!r} in {store.safe_url()}")
            spec = SearchSpec.from_dict(stored.spec)
            search_id = resume
            work = Path(stored.state.get("work_dir") or default_work_root() / resume)
        else:
            if model is None or data is None or devices is None:
                raise ConfigError("search needs --model, --data and --devices (or --resume ID)")
            spec = SearchSpec(
                model=model, data=data, devices=_split(devices), constraints=tuple(constraint or ()),
                objective=objective, budget=budget, trials=trials, sampler=sampler,  # type: ignore[arg-type]
                runtimes=_split(runtimes), threads=parse_threads(threads), precisions=_split(precisions),
                max_prune=max_prune, lowrank=not no_lowrank,
                students=tuple(float(s) for s in _split(students)), recovery_epochs=recovery_epochs,
                pretrain_epochs=pretrain_epochs, weights=weights, runs=runs, eval_samples=eval_samples,
                task=task,
            )  # fmt: skip
            search_id = check_search_id(search_id or new_search_id())
            work = (work_dir or default_work_root() / search_id).expanduser()

        def progress(kind: str, data: dict[str, Any]) -> None:
            if kind == "trial":
                err.log(
                    f"{data['device']} trial {data.get('trial')}: {data['decision']} "
                    f"({data.get('used')}/{data.get('budget')} measured) {data['reason'][:120]}"
                )
            else:
                err.log(data.get("message", kind))

        with (
            library_chatter(),
            conn.fleet(store) as fleet,
        ):
            fleet.wait_synced()
            outcome = run_search(
                spec, store, fleet, search_id=search_id, work_dir=work, progress=progress
            )
        if report is not None:
            path = write_search_report(store, search_id, report, compare)
            outcome["search"]["report"] = str(path)
            err.print(f"report: {path}")
    if as_json:
        sys.stdout.write(json.dumps(outcome, indent=2, default=str) + "\n")
        return
    console = wide_console()
    table = Table(title=f"search {search_id}: choice per device (measured on the board)")
    for column in ("device", "chosen", "p90 ms", "metric", "measured", "decisions"):
        table.add_column(column)
    for device, doc in sorted(outcome["devices"].items()):
        sel = doc["selection"] or {}
        cand = sel.get("candidate") or {}
        table.add_row(
            device, sel.get("chosen") or "[red]none[/]",
            f"{(cand.get('latency_ms') or {}).get('p90', float('nan')):.3f}" if cand else "-",
            f"{cand.get('metric')} {cand.get('metric_value'):.4f}" if cand.get("metric_value") is not None else "-",
            f"{doc['board_measurements']}/{doc['budget']}",
            ", ".join(f"{v} {k}" for k, v in sorted(doc["decisions"].items())),
        )  # fmt: skip
    console.print(table)
    for device, doc in sorted(outcome["devices"].items()):
        console.print(f"[bold]{device}[/]: {(doc['selection'] or {}).get('reason', '')}")
    console.print(
        f"search {search_id}: resume or join it with `edgetailor search --resume {search_id}`"
    )


@app.command("predict")
@connection_options("db")
def predict_cmd(
    conn: Connection,
    model: Annotated[Path, typer.Option("--model", help="an exported .tflite or .onnx file")],
    device: Annotated[
        str, typer.Option("--device", help="the device id whose board class to predict for")
    ],
    threads: Annotated[
        int | None, typer.Option("--threads", min=1, max=256, help="threads the board runs it with")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Predict a file's p90 latency and peak memory on a device, with an 80% interval, from every
    result stored so far (fitted now); a board class with too few results is said to be unknown."""
    from host.search.predictor.data import board_class_of, fit_predictor, predict_file
    from host.search.predictor.features import graph_features
    from host.search.store import SearchStore

    if not model.is_file():
        raise ConfigError(f"--model {model} does not exist")
    graph = graph_features(model)
    with conn.store() as store:
        board = board_class_of(store, device)
        if board is None:
            raise ConfigError(
                f"device {device!r} has never announced itself in {store.safe_url()}: start its agent "
                "against this host's broker first"
            )
        predictor = fit_predictor(store, SearchStore(store))
    prediction = predict_file(predictor, graph, board, threads, graph.format)
    doc = {
        "model": str(model),
        "device": device,
        "board_class": board.to_dict(),
        "threads": threads,
        "runtime": graph.format,
        "macs": graph.macs,
        **prediction.to_dict(),
    }
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
        return
    console = Console()
    console.print(f"{model.name} on {device} ({board.describe()}, class {board.key}):")
    if not prediction.known:
        console.print(
            f"  unknown board class: {prediction.reason}; a search measures such a board fully"
        )
        return
    lo, hi = prediction.latency_interval or (None, None)
    mlo, mhi = prediction.memory_interval or (None, None)
    console.print(
        f"  p90 latency {prediction.latency_p90_ms:.4g} ms (80% interval {lo:.4g} – {hi:.4g} ms)"
    )
    console.print(
        f"  peak memory {prediction.peak_rss_mb:.4g} MB (80% interval {mlo:.4g} – {mhi:.4g} MB)"
    )
    error = prediction.class_error
    if error:
        console.print(
            f"  held-out error on this class: median {error['median_rel_error']:.1%}, "
            f"p90 {error['p90_rel_error']:.1%} over {error['held_out']} results"
            + (
                f"; the 80% interval, calibrated on them, held {error['interval_coverage']:.0%}"
                if error.get("interval_coverage") is not None
                else ""
            )
        )
    console.print(
        f"  fitted on {prediction.class_rows} result(s) of this class, {predictor.rows} in all"
    )
