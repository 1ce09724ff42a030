"""``edgetailor campaign``, ``status``, ``report`` and ``demo``.

    edgetailor campaign --model builtin:digits_cnn --data builtin:digits --space demo \\
        --devices all --broker mqtt://127.0.0.1:1883 --constraint "accuracy_drop<=0.02" --json
    edgetailor campaign --resume c-20250101-120000-ab12          # after a host crash
    edgetailor status --json
    edgetailor report --campaign c-20250101-120000-ab12 --out report/
    edgetailor demo --agents 3 --out demo/

Progress goes to stderr (rich); tables or ``--json`` to stdout. ``deploy`` and ``rollback`` live in
host/cli/deploy_cmds.py.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any, TextIO

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from host.cli.compress_cmds import EVAL_SAMPLES_HELP, METRIC_HELP, TASK_HELP, metric_text
from host.cli.connection import FLEET, Connection, JsonOpt, connection_options
from host.cli.main import app
from host.cli.output import library_chatter, wide_console
from host.cli.progress import LiveProgress
from shared.errors import ConfigError
from shared.results import BenchmarkResult

logger = logging.getLogger(__name__)


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


# --------------------------------------------------------------------------------------------------
# Tables (the demo prints them too, through _print_demo).


def _interval_cell(interval: Any) -> str:
    if not interval or len(interval) != 2:
        return "-"
    return f"[{_fmt(interval[0])}, {_fmt(interval[1])}]"


def results_table(outcome: dict[str, Any]) -> Table:
    table = Table(title=f"campaign {outcome['campaign']['id']}: results")
    for column in (
        "device",
        "candidate",
        "precision",
        "runtime",
        "threads",
        "KiB",
        "mean ms",
        "p50 ms",
        "p50 95% CI",
        "p90 ms",
        "CV",
        "invoke p50 ms",
        "peak RSS MB",
        "metric",
        "status",
    ):
        table.add_column(
            column,
            justify="right"
            if "ms" in column or column in ("KiB", "peak RSS MB", "CV", "p50 95% CI")
            else "left",
        )
    chosen = {(d, s["candidate"]) for d, s in outcome["selection"].items()}
    for row in sorted(outcome["results"], key=lambda r: (r["device"], r["candidate"])):
        lat = row.get("latency_ms") or {}
        mark = " *" if (row["device"], row["candidate"]) in chosen else ""
        status = row.get("job_status", row.get("status"))
        table.add_row(
            row["device"],
            row["candidate"] + mark,
            str(row.get("precision") or "-"),
            str(row.get("runtime") or "-"),
            str(row.get("threads") or "-"),
            _fmt((row.get("size_bytes") or 0) / 1024, 1),
            _fmt(lat.get("mean")),
            _fmt(lat.get("p50")),
            _interval_cell(row.get("p50_ci")),
            _fmt(lat.get("p90")),
            _fmt(row.get("latency_cv"), 3),
            _fmt((row.get("invoke_ms") or {}).get("p50")),
            _fmt(row.get("peak_rss_mb"), 1),
            metric_text(row) if status == "ok" else "-",
            status if status == "ok" else f"[red]{status}[/]: {(row.get('error') or '')[:60]}",
        )
    return table


def selection_table(outcome: dict[str, Any], labels: dict[str, str] | None = None) -> Table:
    table = Table(title="choice per device (* in the results)")
    table.add_column("device")
    if labels:
        table.add_column("profile")
    for column in ("status", "chosen", "p90 ms", "metric"):
        table.add_column(column)
    for device, sel in sorted(outcome["selection"].items()):
        status = outcome.get("devices", {}).get(device, {}).get("status", "-")
        cells = [device]
        if labels:
            cells.append(labels.get(device, "-"))
        cells += [
            status if status != "offline" else "[red]offline[/]",
            sel["candidate"] or "[red]none[/]",
            _fmt(sel.get("latency_p90_ms")),
            metric_text(sel) if sel["candidate"] else "-",
        ]
        table.add_row(*cells)
    return table


def print_choices(
    console: Console, outcome: dict[str, Any], labels: dict[str, str] | None = None
) -> None:
    """The choice table, then each device's reason in full (too long for a table cell)."""
    console.print(selection_table(outcome, labels))
    for device, sel in sorted(outcome["selection"].items()):
        console.print(f"[bold]{device}[/]: {sel['reason']}")


def candidates_table(outcome: dict[str, Any]) -> Table:
    table = Table(title="candidates (host side)")
    for column in ("id", "precision", "KiB", "params", "MACs", "host metric", "status"):
        table.add_column(column)
    for cand in outcome["candidates"]:
        status = (
            cand["status"]
            if cand["status"] == "ok"
            else f"{cand['status']}: {cand.get('reason') or ''}"
        )
        table.add_row(
            cand["id"],
            cand["precision"],
            _fmt(cand["size_bytes"] / 1024, 1),
            _fmt(cand.get("params")),
            _fmt(cand.get("macs")),
            _fmt(cand.get("host_metric_value"), 4),
            status[:90],
        )
    return table


# --------------------------------------------------------------------------------------------------
# campaign


@app.command("campaign")
@connection_options()
def campaign_cmd(
    conn: Connection,
    model: Annotated[
        str | None,
        typer.Option("--model", help="builtin:NAME, file.py:factory, pkg.mod:factory"),
    ] = None,
    data: Annotated[
        str | None,
        typer.Option("--data", help="builtin:digits, file.npz, image folder, module:factory"),
    ] = None,
    space: Annotated[
        str | None,
        typer.Option(
            "--space",
            help="named search space (see `compress --list`), pkg.mod:SPACE or a JSON file",
        ),
    ] = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="all, or comma-separated device ids")
    ] = None,
    constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--constraint", help='e.g. "latency_p90_ms<=5", "accuracy_drop<=0.02" (repeatable)'
        ),
    ] = None,
    objective: Annotated[
        str | None,
        typer.Option("--objective", help="max_metric, min_latency, min_size, min_memory"),
    ] = None,
    campaign_id: Annotated[
        str | None,
        typer.Option("--campaign-id", help="name the campaign (same spec + id resumes it)"),
    ] = None,
    resume: Annotated[
        str | None, typer.Option("--resume", help="continue the stored campaign with this id")
    ] = None,
    formats: Annotated[
        str | None, typer.Option("--formats", help="comma-separated: tflite,onnx")
    ] = None,
    runs: Annotated[int | None, typer.Option("--runs", help="timed runs per benchmark")] = None,
    min_s: Annotated[
        float | None, typer.Option("--min-s", help="at least this many seconds of timed runs")
    ] = None,
    threads: Annotated[
        str | None,
        typer.Option(
            "--threads",
            help="thread counts to sweep, e.g. 1,2: each (candidate, threads) is measured and "
            "selected as a variant of its own (default: the agent's)",
        ),
    ] = None,
    job_timeout: Annotated[
        float | None, typer.Option("--job-timeout", help="seconds one benchmark may take")
    ] = None,
    retries: Annotated[
        int | None, typer.Option("--retries", help="extra attempts of a failed job")
    ] = None,
    offline_deadline: Annotated[
        float | None,
        typer.Option("--offline-deadline", help="seconds to wait for an offline device"),
    ] = None,
    screen_margin: Annotated[
        float | None,
        typer.Option("--screen-margin", help="host-metric margin that counts as dominated"),
    ] = None,
    pretrain_epochs: Annotated[
        int | None,
        typer.Option(
            "--pretrain-epochs", help="train the model on --data first (zoo models start untrained)"
        ),
    ] = None,
    weights: Annotated[
        str | None, typer.Option("--weights", help="state_dict file of the model")
    ] = None,
    eval_samples: Annotated[
        int | None, typer.Option("--eval-samples", help=EVAL_SAMPLES_HELP)
    ] = None,
    task: Annotated[str | None, typer.Option("--task", help=TASK_HELP)] = None,
    metric: Annotated[str | None, typer.Option("--metric", help=METRIC_HELP)] = None,
    strict: Annotated[
        bool | None,
        typer.Option(
            "--strict",
            help="judge quality constraints on point estimates, not on their 95% intervals",
        ),
    ] = None,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            "--work-dir", help="artifacts (default $EDGETAILOR_HOME/campaigns/ID, ~/.edgetailor)"
        ),
    ] = None,
    report: Annotated[
        Path | None, typer.Option("--report", help="also write the HTML report here")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Compress a model into candidates, benchmark each on every target device, choose per device.

    The options build one campaign spec (host.campaign.CampaignSpec, the body the API takes):
    an option left out takes the spec's default (runs 50, min-s 1, job-timeout 300, retries 1,
    offline-deadline 120, screen-margin 0.02, eval-samples 1000, space default, devices all,
    objective max_metric, formats tflite). Everything the spec names is checked (space,
    constraints, metric, devices) before any model or data loads.
    """
    from host.campaign import CampaignSpec, parse_devices, run_campaign
    from host.campaign.spec import parse_threads
    from host.store.campaigns import CampaignStore

    err = Console(stderr=True)
    given = {
        "model": model, "data": data, "space": space,
        "devices": parse_devices(devices) if devices is not None else None,
        "constraints": tuple(constraint) if constraint else None, "objective": objective,
        "formats": tuple(f.strip() for f in formats.split(",") if f.strip()) if formats else None,
        "pretrain_epochs": pretrain_epochs, "weights": weights, "runs": runs, "min_s": min_s,
        "threads": parse_threads(threads) if threads is not None else None,
        "eval_samples": eval_samples, "task": task, "metric": metric, "strict": strict,
        "job_timeout_s": job_timeout, "retries": retries, "offline_deadline_s": offline_deadline,
        "screen_margin": screen_margin,
    }  # fmt: skip
    values = {k: v for k, v in given.items() if v is not None}
    if resume is None and (model is None or data is None):
        raise ConfigError("campaign needs --model and --data (or --resume ID)")
    if conn.server is not None:
        _campaign_through(conn, resume, campaign_id, as_json, err, values)
        return
    with conn.store() as store:
        if resume is not None:
            from host.campaign import load_campaign

            stored = load_campaign(CampaignStore(store), resume)
            spec = CampaignSpec.from_stored(stored.spec)
            campaign_id = resume
        else:
            spec = CampaignSpec(**values)
        with (
            library_chatter(),
            conn.fleet(store) as fleet,
            LiveProgress(err, transient=as_json) as live,
        ):
            outcome = run_campaign(
                spec, store, fleet, campaign_id=campaign_id, work_dir=work_dir, progress=live
            )
        if report is not None:
            from host.campaign import write_campaign_report

            path = write_campaign_report(CampaignStore(store), outcome["campaign"]["id"], report)
            outcome["campaign"]["report"] = str(path)
            err.print(f"report: {path}")
    if as_json:
        sys.stdout.write(json.dumps(outcome, indent=2, default=str) + "\n")
        return
    console = wide_console()
    console.print(candidates_table(outcome))
    console.print(results_table(outcome))
    print_choices(console, outcome)
    console.print(
        f"campaign {outcome['campaign']['id']} took {outcome['campaign']['seconds']} s; "
        f"resume or report it with --resume / `edgetailor report --campaign ID`"
    )


def _campaign_through(
    conn: Connection,
    resume: str | None,
    campaign_id: str | None,
    as_json: bool,
    err: Console,
    values: dict[str, Any],
) -> None:
    """`campaign --server`: queue it as a job of the service and follow it to its selection."""
    from host.campaign import CampaignSpec

    client = conn.client()
    if resume is not None:
        stored = client.get(f"/campaigns/{resume}")
        body = {**CampaignSpec.from_stored(stored["spec"]).to_dict(), "campaign_id": resume}
    else:
        body = {**CampaignSpec(**values).to_dict(), "campaign_id": campaign_id}
    created = client.post("/campaigns", json={k: v for k, v in body.items() if v is not None})
    cid = created["campaign_id"]
    err.log(f"campaign {cid} queued on {conn.server}; following it (Ctrl-C leaves it running)")
    shown = None
    while True:
        doc = client.get(f"/campaigns/{cid}")
        line = f"{doc['status']} ({doc['job']}): {doc.get('progress', {}).get('message', '')}"
        if line != shown:
            err.log(line)
            shown = line
        if doc["job"] in ("done", "failed", "cancelled"):
            break
        time.sleep(1.0)
    selection = client.get(f"/campaigns/{cid}/selection")
    result = {**doc, "selection": selection["selection"]}
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2, default=str) + "\n")
    else:
        for device, sel in sorted(selection["selection"].items()):
            Console().print(f"[bold]{device}[/]: {sel.get('candidate') or '-'}: {sel['reason']}")
    if doc["job"] != "done":
        raise typer.Exit(1)


# --------------------------------------------------------------------------------------------------
# status


def fleet_status(store: Any, fleet: Any | None, last: int = 3) -> list[dict[str, Any]]:
    """Per device: online, active model, the last benchmark results (newest first)."""
    from host.commands.repository import CommandStore
    from host.deploy import desired_state
    from host.deploy.status import never_seen
    from host.store.campaigns import CampaignStore
    from host.store.deployments import DeploymentStore

    dstore = DeploymentStore(store)
    commands = CommandStore(store)
    live = fleet.devices() if fleet is not None else {}
    known = {d.device_id: d for d in store.list_devices()}
    names: dict[str, str] = {}
    cstore = CampaignStore(store)
    for campaign in cstore.list_campaigns():
        for cand in cstore.candidates(campaign.campaign_id):
            if cand.sha256:
                names[cand.sha256] = cand.candidate_id
    rows = []
    for device_id in sorted(set(live) | set(known)):
        record = live.get(device_id)
        stored = known.get(device_id)
        birth = (
            _struct(record.birth)
            if record is not None and record.birth is not None
            else (stored.birth if stored is not None else None)
        ) or {}
        telemetry = (
            _struct(record.telemetry)
            if record is not None and record.telemetry is not None
            else (stored.telemetry if stored is not None else None)
        ) or {}
        active = telemetry.get("active_sha256") or birth.get("active_sha256")
        results = []
        for job in commands.list(
            device_id=device_id, kinds=("benchmark",), finished_only=True, limit=last,
            newest_first=True,
        ):  # fmt: skip
            result = job.result_as(BenchmarkResult) if job.state == "answered" else None
            results.append(
                {
                    "job_id": job.job_id,
                    "model_sha256": job.model_sha256,
                    "candidate": names.get(job.model_sha256 or ""),
                    "status": "ok" if result is not None else "error",
                    "latency_p90_ms": result.latency_ms.p90 if result else None,
                    "metric": result.metric if result else None,
                    "metric_value": result.metric_value if result else None,
                    "error": job.error_message,
                    "received": job.finished,
                }
            )
        rows.append(
            {
                "device_id": device_id,
                "online": bool(record.online) if record is not None else False,
                "seen_on_broker": record is not None,
                "last_seen": (record.last_seen if record else None)
                or (stored.last_seen if stored else None),
                "tags": birth.get("tags") or {},
                "active_model": {"sha256": active, "candidate": names.get(active or "")}
                if active
                else None,
                "last_results": results,
                "state": desired_state(
                    dstore, device_id, actual_sha256=active,
                    online=bool(record.online) if record is not None else False,
                    last_seen=stored.last_seen if stored else None,
                ),
            }
        )  # fmt: skip
    for device_id in never_seen(dstore, {r["device_id"] for r in rows}):
        rows.append({
            "device_id": device_id, "online": False, "seen_on_broker": False, "last_seen": None,
            "tags": {}, "active_model": None, "last_results": [],
            "state": desired_state(
                dstore, device_id, actual_sha256=None, online=False, seen=False
            ),
        })  # fmt: skip
    return rows


def _result_text(result: dict[str, Any]) -> str:
    """One result in a cell: the figures it has (a deploy's health check may have none)."""
    name = result["candidate"] or (result["model_sha256"] or "?")[:12]
    if result["status"] != "ok":
        return f"{name}: " + f"error {result['error'] or ''}"[:60]
    figures = []
    if result["latency_p90_ms"] is not None:
        figures.append(f"p90 {_fmt(result['latency_p90_ms'])} ms")
    if result["metric"] is not None and result["metric_value"] is not None:
        figures.append(f"{result['metric']} {_fmt(result['metric_value'], 4)}")
    return f"{name}: {', '.join(figures) or 'ok'}"


def _desired_cell(state: dict[str, Any]) -> str:
    desired = state.get("desired") or state.get("last_deploy")
    if desired is None:
        return "-"
    mark = "[green]in sync[/]" if state["in_sync"] else "[yellow]differs[/]"
    return f"{desired.get('label') or desired['sha256'][:12]} ({mark}): {state['reason']}"


def _print_desired(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("device", "online", "active model", "desired"):
        table.add_column(column)
    for row in rows:
        active = row.get("active_model") or {}
        table.add_row(
            row["device_id"], "[green]yes[/]" if row["online"] else "[red]no[/]",
            active.get("label") or (active.get("sha256") or "-")[:12],
            _desired_cell(row["state"]),
        )  # fmt: skip
    Console().print(table)


def _struct(obj: Any) -> dict[str, Any]:
    return msgspec.to_builtins(obj)


@app.command("status")
@connection_options(*FLEET, "server")
def status_cmd(
    conn: Connection,
    as_json: JsonOpt = False,
    wait: Annotated[
        float, typer.Option("--wait", help="seconds to collect retained messages")
    ] = 1.0,
    offline_ok: Annotated[
        bool, typer.Option("--db-only", help="do not contact the broker")
    ] = False,
) -> None:
    """Fleet status: online, active model, desired model and why they differ, last results."""
    from host.fleet import FleetConnectionError

    err = Console(stderr=True)
    if conn.server is not None:
        served = conn.client().get("/status")
        if as_json:
            typer.echo(json.dumps(served, indent=2, default=str))
        else:
            _print_desired(served, f"fleet of {conn.server}")
        return
    with conn.store() as store:
        fleet = None
        if not offline_ok:
            fleet = conn.fleet(store, commands=False)
            try:
                fleet.connect()
                fleet.wait_synced(settle_s=wait)
            except FleetConnectionError as exc:
                err.print(f"[yellow]broker not reachable, showing the database only:[/] {exc}")
                fleet = None
        try:
            rows = fleet_status(store, fleet)
        finally:
            if fleet is not None:
                fleet.close()
    if as_json:
        typer.echo(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=f"fleet on {conn.broker} ({conn.base_topic})")
    for column in ("device", "online", "tags", "active model", "desired", "last results"):
        table.add_column(column)
    for row in rows:
        active = row["active_model"]
        table.add_row(
            row["device_id"],
            "[green]yes[/]" if row["online"] else "[red]no[/]",
            ", ".join(f"{k}={v}" for k, v in row["tags"].items()) or "-",
            "-" if not active else (active["candidate"] or active["sha256"][:12]),
            _desired_cell(row["state"]),
            "\n".join(_result_text(r) for r in row["last_results"]) or "-",
        )
    Console().print(table)


# --------------------------------------------------------------------------------------------------
# report


@app.command("report")
@connection_options("db")
def report_cmd(
    conn: Connection,
    campaign: Annotated[str, typer.Option("--campaign", help="campaign id")],
    out: Annotated[Path, typer.Option("--out", help="directory for index.html and results.json")],
    as_json: JsonOpt = False,
) -> None:
    """Write a campaign's HTML report: choice per device, Pareto plot per device, results table."""
    from host.campaign import write_campaign_report
    from host.store.campaigns import CampaignStore

    with conn.store() as store:
        path = write_campaign_report(CampaignStore(store), campaign, out)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "campaign": campaign,
                    "report": str(path),
                    "results": str(path.parent / "results.json"),
                }
            )
        )
    else:
        typer.echo(str(path))


# --------------------------------------------------------------------------------------------------
# demo


@app.command("demo")
def demo_cmd(
    agents: Annotated[
        int, typer.Option("--agents", min=1, max=8, help="local agents to start")
    ] = 3,
    out: Annotated[
        Path, typer.Option("--out", help="work dir: database, artifacts, agents, report")
    ] = Path("demo-out"),
    space: Annotated[str, typer.Option("--space", help="search space")] = "demo",
    model: Annotated[
        str | None,
        typer.Option("--model", help="model spec (default: builtin:digits_cnn?width=4)"),
    ] = None,
    constraint: Annotated[
        list[str] | None, typer.Option("--constraint", help="override the default constraint")
    ] = None,
    objective: Annotated[
        str, typer.Option("--objective", help="max_metric, min_latency, min_size, min_memory")
    ] = "min_latency",
    serve: Annotated[
        bool,
        typer.Option(
            "--serve", help="keep the service, its dashboard and the agents running until Ctrl-C"
        ),
    ] = False,
    port: Annotated[
        int | None,
        typer.Option("--port", help="TCP port of the dashboard (default: 8000, or a free one)"),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """The whole loop on this machine: embedded broker, SQLite, local agents with different CPU
    profiles, the digits CNN, a campaign, a choice per device, deploy, HTML report, dashboard."""
    from host.demo import DEFAULT_CONSTRAINTS, DEFAULT_MODEL, run_demo

    started = time.monotonic()
    err = Console(stderr=True)

    with library_chatter() as stdout:

        def ready(summary: dict[str, Any]) -> None:
            summary["seconds"] = round(time.monotonic() - started, 1)
            if as_json:
                stdout.write(json.dumps(summary, indent=2, default=str) + "\n")
                stdout.flush()
                return
            _print_demo(summary, stdout)

        run_demo(
            agents=agents,
            out_dir=out,
            space=space,
            model=model or DEFAULT_MODEL,
            constraints=tuple(constraint) if constraint else DEFAULT_CONSTRAINTS,
            objective=objective,
            console=err,
            quiet=as_json,
            serve=serve,
            port=port,
            on_ready=ready,
        )


def _print_demo(summary: dict[str, Any], stdout: TextIO) -> None:
    console = wide_console(stdout)
    outcome = summary["outcome"]
    console.print(candidates_table(outcome))
    console.print(results_table(outcome))
    print_choices(console, outcome, {p["device"]: p["label"] for p in summary["profiles"]})
    for line in summary.get("deploy", {}).get("lines", []):
        console.print(line)
    console.print(f"report: {summary['report']}")
    console.print(
        f"demo finished in {summary['seconds']:.0f} s "
        f"(compress {summary['timings']['candidates_s']:.0f} s, "
        f"measure {summary['timings']['measure_s']:.0f} s)"
    )
    # The last line: an address that works now (with its token), or none at all.
    dashboard = summary["dashboard"]
    listed = ", ".join(dashboard["devices"]) or "no device"
    if dashboard["served"]:
        console.print(f"dashboard ({listed} online; Ctrl-C stops it all): {dashboard['login_url']}")
    else:
        console.print(
            f"dashboard checked ({listed} online) and stopped with the demo; `edgetailor demo "
            "--serve` (`make demo DEMO_ARGS=--serve`) keeps it running and prints its address"
        )


# --------------------------------------------------------------------------------------------------
# deploy / rollback: see host/cli/deploy_cmds.py (registered through COMMAND_MODULES in main.py).
