"""``edgetailor broker``, ``edgetailor devices`` and ``edgetailor bench``: the fleet from a terminal.

``bench`` pushes one .tflite/.onnx (and optionally an eval .npz) to one device, waits for the
benchmark and prints it (``--json``: the BenchmarkResult as JSON on stdout; progress goes to stderr).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from host.cli.connection import FLEET, Connection, JsonOpt, connection_options
from host.cli.main import app
from host.errors import JobFailedError, JobTimeoutError
from shared.results import BenchmarkResult, from_data, to_data
from shared.transfer import DEFAULT_CHUNK_SIZE

logger = logging.getLogger(__name__)

# Time on top of the benchmark's own timeout for the transfer and the queue on the device.
TRANSFER_ALLOWANCE_S = 300.0


@app.command("broker")
def broker_cmd(
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 1883,
) -> None:
    """Run the embedded MQTT broker (amqtt) until Ctrl-C; use Mosquitto for real fleets."""
    from host.broker import EmbeddedBroker

    broker = EmbeddedBroker(host, port).start()
    typer.echo(f"embedded MQTT broker listening on {broker.url} (Ctrl-C stops it)", err=True)
    broker.serve_forever()


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    seconds = max(0.0, time.time() - ts)
    return f"{seconds:.0f} s ago" if seconds < 120 else f"{seconds / 60:.0f} min ago"


@app.command("devices")
@connection_options(*FLEET, "server")
def devices_cmd(
    conn: Connection,
    as_json: JsonOpt = False,
    wait: Annotated[
        float, typer.Option("--wait", help="seconds to collect retained messages")
    ] = 1.0,
    forget: Annotated[
        str | None,
        typer.Option(
            "--forget",
            metavar="ID",
            help="unpin this device's key (its data dir was wiped: it made a new one); its next "
            "signed birth pins the new key",
        ),
    ] = None,
) -> None:
    """List devices: what the broker's retained birth/status messages say, then the devices only
    the database knows (marked: they may belong to another broker or base topic)."""
    from host.fleet.devices import DeviceRecord

    if forget is not None:
        from shared.topics import check_device_id

        with conn.store() as store:
            if not store.forget_device_key(check_device_id(forget)):
                raise typer.BadParameter(
                    f"no device {forget!r} in the database", param_hint="--forget"
                )
        typer.echo(
            f"forgot the key pinned for {forget}: the next signed birth of {forget} pins its "
            "new key (a running host reads its retained birth again when it next hears from it)"
        )
        return

    if conn.server is not None:
        served = conn.client().get("/devices")
        if as_json:
            typer.echo(json.dumps(served, indent=2))
            return
        table = Table(title=f"devices of {conn.server}")
        for column in ("id", "online", "arch", "cores", "runtimes", "agent", "active model"):
            table.add_column(column)
        for row in served:
            active = row.get("active_model") or {}
            table.add_row(
                row["device_id"], "[green]yes[/]" if row["online"] else "[red]no[/]",
                str(row.get("arch") or "-"), str(row.get("cores") or "-"),
                ", ".join(row.get("runtimes") or []) or "-", str(row.get("agent_version") or "-"),
                active.get("label") or (active.get("sha256") or "-")[:12],
            )  # fmt: skip
        Console().print(table)
        return
    with conn.store() as store, conn.fleet(store, commands=False) as fleet:
        fleet.wait_synced(settle_s=wait)
        rows = {
            device_id: {**rec.to_dict(), "source": "broker"}
            for device_id, rec in fleet.devices().items()
        }
        for known in store.list_devices():
            row = rows.get(known.device_id)
            if row is None:
                # This broker does not announce it: what the database last recorded, marked.
                row = DeviceRecord(known.device_id).to_dict()
                row.update(online=None, last_seen=known.last_seen, source="database")
                birth = known.birth or {}
                for key in ("arch", "cpu_model", "cores", "ram_mb", "os", "agent_version"):
                    row[key] = birth.get(key)
                row["runtimes"] = birth.get("runtimes", [])
                row["delegates"] = birth.get("delegates", [])
                rows[known.device_id] = row
            if row.get("telemetry") is None and known.telemetry is not None:
                row["telemetry"] = known.telemetry
                row["last_telemetry_at"] = known.last_telemetry_at
    ordered = [rows[k] for k in sorted(rows)]
    if as_json:
        typer.echo(json.dumps(ordered, indent=2))
        return
    table = Table(title=f"devices on {conn.broker} ({conn.base_topic})")
    for column in (
        "id", "online", "arch", "cores", "RAM MB", "runtimes", "accelerators", "agent", "telemetry",
    ):  # fmt: skip
        table.add_column(column)
    for row in sorted(ordered, key=lambda r: (r.get("source") != "broker", r["device_id"])):
        tele = row.get("telemetry") or {}
        telemetry = (
            f"cpu {tele.get('cpu_percent', 0):.0f}% rss {tele.get('agent_rss_mb', 0):.0f} MB "
            f"({_ago(row.get('last_telemetry_at'))})"
            if tele
            else "-"
        )
        if row.get("source") == "database":
            online = f"[dim]database only, last seen {_ago(row.get('last_seen'))}[/]"
        else:
            online = "[green]yes[/]" if row["online"] else "[red]no[/]"
        table.add_row(
            row["device_id"],
            online,
            str(row.get("arch") or "-"),
            str(row.get("cores") or "-"),
            f"{row['ram_mb']:.0f}" if row.get("ram_mb") else "-",
            ", ".join(f"{r['name']} {r['version']}" for r in row.get("runtimes") or []) or "-",
            ", ".join(row.get("delegates") or []) or "-",
            str(row.get("agent_version") or "-"),
            telemetry,
        )
    Console().print(table)


def _ci(interval: list[float] | None) -> str:
    return "-" if not interval else f"[{interval[0]:.3f}, {interval[1]:.3f}] ms"


def _print_result(result: BenchmarkResult, device_id: str) -> None:
    table = Table(title=f"benchmark of {result.model_sha256[:12]} on {device_id}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    lat = result.latency_ms
    rows = [
        ("runtime", f"{result.backend} ({result.runtime})"),
        ("threads", str(result.threads)),
        ("size", f"{result.size_bytes / 1024:.1f} KiB"),
        (
            "import of the runtime",
            "-" if result.import_ms is None else f"{result.import_ms:.1f} ms",
        ),
        ("load", f"{result.load_ms:.1f} ms"),
        ("latency mean", f"{lat.mean:.3f} ms"),
        ("latency p50 / p90 / p99", f"{lat.p50:.3f} / {lat.p90:.3f} / {lat.p99:.3f} ms"),
        ("p50 / p90 95% interval", f"{_ci(lat.p50_ci)} / {_ci(lat.p90_ci)}"),
        ("coefficient of variation", "-" if lat.cv is None else f"{lat.cv:.3f}"),
        (
            "invoke()-only p50 / p90",
            "-"
            if result.invoke_ms is None
            else f"{result.invoke_ms.p50:.3f} / {result.invoke_ms.p90:.3f} ms",
        ),
        ("runs", str(result.runs)),
        ("peak RSS (worker)", f"{result.peak_rss_mb:.1f} MB"),
    ]
    if result.metric is not None and result.metric_value is not None:
        interval = result.metric_interval
        shown = f"{result.metric_value:.4f}"
        if interval:
            shown += f" [{interval[0]:.4f}, {interval[1]:.4f}]"
        rows.append((result.metric, f"{shown} on {result.eval_samples} samples ({result.task})"))
    for warning in result.eval_warnings:
        rows.append(("eval set warning", warning))
    for transfer in result.transfers:
        how = (
            "already stored"
            if transfer.already_stored
            else (f"{transfer.chunks_written} chunks in {transfer.seconds:.2f} s")
        )
        rows.append((f"transfer {transfer.sha256[:12]}", how))
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


@app.command("bench")
@connection_options()
def bench_cmd(
    conn: Connection,
    model: Annotated[
        Path, typer.Argument(help="model file: .tflite or .onnx", exists=True, dir_okay=False)
    ],
    device: Annotated[str, typer.Option("--device", help="device id")],
    eval_file: Annotated[
        Path | None,
        typer.Option(
            "--eval", help=".npz with x (and y labels or ref outputs)", exists=True, dir_okay=False
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(
            "--threads", min=1, help="runtime threads on the device (default: the agent's)"
        ),
    ] = None,
    task: Annotated[
        str | None,
        typer.Option(
            "--task",
            help="score the eval file as classification, embedding or regression "
            "(default: the task the file names)",
        ),
    ] = None,
    runs: Annotated[
        int, typer.Option("--runs", min=1, help="timed runs (at least this many, and at least 1 s)")
    ] = 50,
    timeout: Annotated[
        float, typer.Option("--timeout", help="benchmark timeout on the device, s")
    ] = 300.0,
    as_json: JsonOpt = False,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", help="bytes per chunk")
    ] = DEFAULT_CHUNK_SIZE,
    device_timeout: Annotated[
        float, typer.Option("--device-timeout", help="s to wait for the device")
    ] = 15.0,
) -> None:
    """Push a model to one device, benchmark it there, print latency, memory and accuracy."""
    from host.artifacts import format_of

    if format_of(model) not in ("tflite", "onnx"):
        raise typer.BadParameter(f"{model} is not a .tflite or .onnx model", param_hint="MODEL")
    err = Console(stderr=True)
    if conn.server is not None:
        body = {"device_id": device, "threads": threads, "runs": runs, "timeout_s": timeout,
                "task": task, "device_timeout_s": min(device_timeout, 60.0)}  # fmt: skip
        _bench_through(conn, model, eval_file, body, as_json, err)
        return
    from host.commands.bench import submit_benchmark, wait_benchmark

    with (
        conn.store() as store,
        conn.fleet(store, chunk_size=chunk_size) as fleet,
        err.status(f"waiting for {device}...") as status,
    ):
        try:
            fleet.wait_for_device(device, device_timeout)
            # Recorded first, published by the fleet's command driver (this process, until the
            # answer is stored), exactly as `edgetailor serve` does.
            command_id = submit_benchmark(
                fleet, device, model, eval_path=eval_file, threads=threads, runs=runs,
                timeout_s=timeout, task=task,
            )  # fmt: skip
            status.update(f"{device}: sent job {command_id}")
            deadline = time.monotonic() + timeout + TRANSFER_ALLOWANCE_S
            while True:
                try:
                    result = wait_benchmark(fleet, command_id, 0.5)
                    break
                except JobTimeoutError:
                    if time.monotonic() > deadline:
                        fleet.commands.cancel(command_id)
                        raise
                    info = fleet.commands.commands.get(command_id)
                    status.update(f"{device}: {(info.stage if info else None) or 'sent'}")
        except (JobFailedError, JobTimeoutError) as exc:
            err.print(f"[red]benchmark failed:[/] {exc}")
            if as_json:
                code = getattr(exc, "code", "timeout")
                typer.echo(json.dumps({"error": {"code": code, "message": str(exc)}}))
            raise typer.Exit(1) from exc
    if as_json:
        sys.stdout.write(json.dumps(to_data(result), indent=2) + "\n")
    else:
        _print_result(result, device)


def _bench_through(
    conn: Connection,
    model: Path,
    eval_file: Path | None,
    body: dict[str, Any],
    as_json: bool,
    err: Console,
) -> None:
    """`bench --server`: upload the files, queue the benchmark on the service, poll its job."""
    client = conn.client()
    body["sha256"] = client.upload(model)
    if eval_file is not None:
        body["eval_sha256"] = client.upload(eval_file)
    job = client.post("/benchmarks", json={k: v for k, v in body.items() if v is not None})
    deadline = time.monotonic() + body["timeout_s"] + TRANSFER_ALLOWANCE_S
    with err.status(
        f"{body['device_id']}: sent job {job['job_id']} through {conn.server}"
    ) as status:
        while not job["finished"]:
            if time.monotonic() > deadline:
                job = {**job, "status": "error", "error_code": "timeout",
                       "error_message": f"no result within {body['timeout_s']:.0f} s"}  # fmt: skip
                break
            time.sleep(0.5)
            job = client.get(f"/jobs/{job['job_id']}")
            status.update(f"{body['device_id']}: {job['status']}")
    if job["status"] != "ok" or job["result"] is None:
        message = job.get("error_message") or job["status"]
        err.print(f"[red]benchmark failed:[/] {job.get('error_code')}: {message}")
        if as_json:
            error = {"code": job.get("error_code") or "error", "message": message}
            typer.echo(json.dumps({"error": error, "job_id": job["job_id"]}))
        raise typer.Exit(1)
    if as_json:
        sys.stdout.write(json.dumps(job["result"], indent=2) + "\n")
    else:
        _print_result(from_data(job["result"], BenchmarkResult), body["device_id"])
