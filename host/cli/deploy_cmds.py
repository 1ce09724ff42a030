"""``edgetailor deploy`` and ``edgetailor rollback``: make a model the active one on devices, or undo it.

``deploy --campaign ID`` deploys each device's choice from a finished campaign; ``deploy --model
FILE --devices a,b`` deploys one file to the named devices. Both run as a staged rollout
(``--waves 1,25%,100%``, ``--max-failures N``; see host.deploy). ``rollback --device ID`` restores the
device's previous model. Progress goes to stderr; ``--json`` prints the outcome document on stdout.
The exit code is 0 when every device committed (or the rollback restored), 1 otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from host.cli.connection import FLEET, Connection, JsonOpt, connection_options
from host.cli.main import app
from host.errors import UnknownDeviceError
from shared.errors import ConfigError

logger = logging.getLogger(__name__)

_COLOURS = {"committed": "green", "restored": "green", "wave_rolled_back": "yellow"}


def _devices(text: str | None) -> list[str] | None:
    if not text:
        return None
    return [d.strip() for d in text.split(",") if d.strip()] or None


def _print_rollout(doc: dict[str, Any]) -> None:
    table = Table(title=f"rollout {doc['rollout_id']}")
    for column in ("wave", "device", "model", "outcome", "health", "detail"):
        table.add_column(column)
    for row in doc["devices"]:
        colour = _COLOURS.get(row["outcome"], "red")
        health = row.get("health") or {}
        p90 = health.get("latency_p90_ms")
        table.add_row(
            str(row["wave"]),
            row["device_id"],
            (row.get("label") or "") + f" {row['sha256'][:12]}",
            f"[{colour}]{row['outcome']}[/]",
            f"p90 {p90:.2f} ms" if isinstance(p90, float) else "-",
            row.get("detail") or "",
        )
    for device in doc["skipped"]:
        table.add_row("-", device, "", "[dim]skipped[/]", "-", "the rollout stopped before")
    Console().print(table)
    if doc["aborted"]:
        Console().print(f"[red]aborted:[/] {doc['reason']}")


@app.command("deploy")
@connection_options()
def deploy_cmd(
    conn: Connection,
    campaign: Annotated[
        str | None,
        typer.Option("--campaign", help="deploy each device's choice of this campaign"),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="deploy this .tflite/.onnx instead", exists=True, dir_okay=False
        ),
    ] = None,
    eval_file: Annotated[
        Path | None,
        typer.Option(
            "--eval",
            help="eval .npz for the health check (with --model)",
            exists=True,
            dir_okay=False,
        ),
    ] = None,
    devices: Annotated[
        str | None,
        typer.Option("--devices", help="comma-separated device ids (default: all selected)"),
    ] = None,
    waves: Annotated[
        str, typer.Option("--waves", help="devices per wave: counts or percentages")
    ] = "1,25%,100%",
    max_failures: Annotated[
        int,
        typer.Option(
            "--max-failures", min=0, help="failures a wave may have before the rollout aborts"
        ),
    ] = 0,
    latency_budget_ms: Annotated[
        float | None,
        typer.Option(
            "--latency-budget-ms",
            help="health check: p90 latency bound (default: the "
            "campaign's latency_p90_ms constraint)",
        ),
    ] = None,
    min_metric: Annotated[
        float | None,
        typer.Option("--min-metric", help="health check: lowest accuracy/agreement"),
    ] = None,
    health_runs: Annotated[
        int,
        typer.Option("--health-runs", min=1, help="health check: timed runs of the staged model"),
    ] = 20,
    timeout: Annotated[
        float, typer.Option("--timeout", help="health check timeout on a device, s")
    ] = 300.0,
    device_timeout: Annotated[
        float, typer.Option("--device-timeout", help="s to wait for a device")
    ] = 30.0,
    as_json: JsonOpt = False,
    pending_ok: Annotated[
        bool,
        typer.Option(
            "--pending-ok",
            help="deploy to devices never seen too (with --server: each waits, pending until "
            "first seen; without: each is waited for up to --device-timeout)",
        ),
    ] = False,
) -> None:
    """Make a model the active one on devices: health check, atomic switch, staged waves.

    Checked before anything is sent: --model is a .tflite or .onnx, --eval an .npz, and every
    device one this host has seen (else exit 2, unless --pending-ok).
    """
    from host.artifacts import format_of
    from host.deploy import Deployer, DeployTarget, parse_waves, targets_from_campaign

    if (campaign is None) == (model is None):
        raise typer.BadParameter(
            "give either --campaign ID or --model FILE", param_hint="--campaign"
        )
    wanted = _devices(devices)
    if model is not None and not wanted:
        raise typer.BadParameter("--model needs --devices ID[,ID...]", param_hint="--devices")
    if model is not None and format_of(model) not in ("tflite", "onnx"):
        raise ConfigError(f"--model {model.name} is not a model: deploy a .tflite or .onnx")
    if eval_file is not None and format_of(eval_file) != "npz":
        raise ConfigError(f"--eval {eval_file.name} is not an eval set: give an .npz of x, y")
    wave_spec = parse_waves(waves)
    if conn.server is not None:
        _deploy_through(
            conn, campaign=campaign, model=model, eval_file=eval_file, devices=wanted,
            body={"waves": waves, "max_failures": max_failures,
                  "latency_budget_ms": latency_budget_ms, "min_metric": min_metric,
                  "health_runs": health_runs, "timeout_s": timeout,
                  "offline_grace_s": device_timeout, "pending_ok": pending_ok or None},
            grace_s=device_timeout, as_json=as_json,
        )  # fmt: skip
        return
    err = Console(stderr=True)
    with conn.store() as store:
        if campaign is not None:
            targets = targets_from_campaign(
                store, campaign, devices=wanted, latency_budget_ms=latency_budget_ms,
                min_metric=min_metric,
            )  # fmt: skip
        else:
            targets = [
                DeployTarget(
                    device_id=d,
                    artifact=model,
                    eval_path=eval_file,  # type: ignore[arg-type]
                    latency_budget_ms=latency_budget_ms,
                    min_metric=min_metric,
                    label=model.name if model else "",
                )
                for d in wanted or []
            ]
        with (
            conn.fleet(store) as fleet,
            err.status("deploying") as status,
        ):
            if not pending_ok:
                _check_seen(store, fleet, [t.device_id for t in targets])

            def progress(event: str, data: dict[str, Any]) -> None:
                if event == "wave":
                    err.log(f"wave {data['wave']}: {', '.join(data['devices'])}")
                elif event == "stage":
                    status.update(f"{data['device']}: {data['stage']}")
                elif event == "outcome":
                    err.log(f"{data['device']}: {data['outcome']} {data.get('detail') or ''}")
                elif event == "abort":
                    err.log(f"[red]abort:[/] {data['reason']}")

            deployer = Deployer(
                fleet, health_runs=health_runs, timeout_s=timeout, device_timeout_s=device_timeout,
                progress=progress,
            )  # fmt: skip
            result = deployer.rollout(targets, wave_spec, max_failures)
    doc = result.to_dict()
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    else:
        _print_rollout(doc)
    if not result.ok:
        raise typer.Exit(1)


def _check_seen(store: Any, fleet: Any, devices: list[str]) -> None:
    """Exit 2 (UnknownDeviceError) for a device neither the database nor the broker knows."""

    fleet.wait_synced()
    known = {d.device_id for d in store.list_devices()} | set(fleet.devices())
    unknown = [d for d in devices if d not in known]
    if unknown:
        raise UnknownDeviceError(
            f"device(s) {', '.join(unknown)} never seen on {fleet.address} or in the database "
            f"(known: {', '.join(sorted(known)[:20]) or 'none'}); start their agents, or pass "
            "--pending-ok"
        )


@app.command("rollback")
@connection_options(*FLEET, "server")
def rollback_cmd(
    conn: Connection,
    device: Annotated[str, typer.Option("--device", help="device id")],
    deploy_id: Annotated[
        str | None,
        typer.Option("--deploy-id", help="only if this deploy is still the active one"),
    ] = None,
    reason: Annotated[str, typer.Option("--reason", help="recorded on the device")] = "",
    timeout: Annotated[float, typer.Option("--timeout", help="s to wait for the answer")] = 60.0,
    device_timeout: Annotated[
        float, typer.Option("--device-timeout", help="s to wait for the device")
    ] = 30.0,
    as_json: JsonOpt = False,
) -> None:
    """Restore the model a device ran before its last deploy."""

    from host.deploy import Deployer

    if conn.server is not None:
        doc = conn.client(timeout=timeout + 30).post(
            f"/devices/{device}/rollback",
            json={"deploy_id": deploy_id, "reason": reason, "timeout_s": timeout},
        )
    else:
        with conn.store() as store, conn.fleet(store) as fleet:
            deployer = Deployer(fleet, device_timeout_s=device_timeout)
            outcome = deployer.rollback(device, deploy_id=deploy_id, reason=reason, timeout=timeout)
        doc = asdict(outcome)
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif doc["outcome"] == "restored":
        Console().print(
            f"[green]{device}: restored[/] {doc.get('active_sha256') or '-'} "
            f"(was {doc.get('previous_sha256') or '-'})"
        )
    else:
        Console(stderr=True).print(
            f"[red]{device}: {doc['outcome']}[/] [{doc.get('error_code')}] {doc.get('detail')}"
        )
    if doc["outcome"] != "restored":
        raise typer.Exit(1)


def _deploy_through(
    conn: Connection,
    *,
    campaign: str | None,
    model: Path | None,
    eval_file: Path | None,
    devices: list[str] | None,
    body: dict[str, Any],
    grace_s: float,
    as_json: bool,
) -> None:
    """`deploy --server`: the rollout is created on the service, which drives it; this follows it
    until every device answered or the rest waits on offline devices (the service goes on)."""
    client = conn.client()
    if campaign is not None:
        body["campaign_id"] = campaign
        body["devices"] = devices
        body.pop("pending_ok", None)  # a campaign's devices were measured: all seen
    else:
        if model is None:
            raise typer.BadParameter("give --campaign ID or --model FILE", param_hint="--model")
        body["sha256"] = client.upload(model)
        body["devices"] = devices
        if eval_file is not None:
            body["eval_sha256"] = client.upload(eval_file)
    created = client.post("/deployments", json={k: v for k, v in body.items() if v is not None})
    err = Console(stderr=True)
    err.log(f"rollout {created['rollout_id']} created on {conn.server}; following it")
    doc = client.follow_deployment(created["rollout_id"], grace_s)
    online = {d["device_id"]: d["online"] for d in client.get("/devices")}
    rows = []
    for target in doc["devices"]:
        outcome = target["state"]
        if outcome in ("pending", "sent") and not online.get(target["device_id"]):
            outcome = "offline"
        rows.append({**target, "outcome": outcome})
    result = {
        "rollout_id": doc["rollout_id"], "status": doc["status"],
        "ok": doc["status"] != "aborted" and all(r["outcome"] == "committed" for r in rows),
        "aborted": doc["status"] == "aborted", "aborted_wave": doc["aborted_wave"],
        "reason": doc["reason"], "waves": doc["waves"],
        "skipped": [r["device_id"] for r in rows if r["outcome"] in ("skipped", "waiting")],
        "devices": [r for r in rows if r["outcome"] not in ("skipped", "waiting")],
    }  # fmt: skip
    if as_json:
        sys.stdout.write(json.dumps(result, indent=2) + "\n")
    else:
        _print_rollout(result)
    if not result["ok"]:
        raise typer.Exit(1)
