"""``edgetailor serve``: the host as a service (fleet side, deployments, campaigns, REST API)."""

from __future__ import annotations

import logging
from typing import Annotated

import typer

from host.cli.connection import FLEET, Connection, connection_options
from host.cli.main import app
from host.security import edgetailor_home

logger = logging.getLogger(__name__)


@app.command("serve")
@connection_options(*FLEET, "signing_key")
def serve_cmd(
    conn: Connection,
    host: Annotated[str, typer.Option("--host", help="address the API listens on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port of the API")] = 8000,
    new_token: Annotated[
        bool, typer.Option("--new-token", help="replace the API token (printed once)")
    ] = False,
    log_level: Annotated[
        str, typer.Option("--log-level", help="debug, info, warning or error")
    ] = "info",
    share_group: Annotated[
        str | None,
        typer.Option(
            "--share-group",
            help="run as one of several replicas on one database: results and chunk requests "
            "arrive through the MQTT shared subscription $share/GROUP/..., each to one replica",
        ),
    ] = None,
    allow_module: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-module",
            help="let campaigns posted through the API name code under this module prefix "
            "(pkg or pkg.sub: models, data, spaces, metrics as pkg.mod:attr; repeatable; an "
            "admin token is needed to use it). None by default: builtins and uploads only",
        ),
    ] = None,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            "--allow-host",
            help="a Host header name the API answers to besides the bind address (the name "
            "clients use, e.g. behind a proxy; repeatable; * turns the check off)",
        ),
    ] = None,
    open_reads: Annotated[
        bool,
        typer.Option("--open-reads", help="answer reads (GET) without a token, from anywhere"),
    ] = False,
    max_upload_mb: Annotated[
        int, typer.Option("--max-upload-mb", min=1, max=2048, help="largest artifact upload")
    ] = 2048,
    max_array_mb: Annotated[
        int,
        typer.Option(
            "--max-array-mb", min=1, help="largest uploaded .npz, once its arrays are inflated"
        ),
    ] = 1024,
) -> None:
    """Run the fleet side, deployments, campaign jobs and the REST API in one process."""
    from host.artifacts import UploadLimits
    from host.campaign.references import check_module_prefix
    from host.service.service import Service, ServiceConfig

    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise typer.BadParameter(f"unknown log level {log_level!r}", param_hint="--log-level")
    logging.getLogger().setLevel(level)
    service = Service(
        ServiceConfig(
            broker=conn.broker, db=conn.db, host=host, port=port, base_topic=conn.base_topic,
            tls=conn.tls, signing_key=conn.signing_key,
            home=edgetailor_home(), new_token=new_token, log_level=log_level.lower(),
            share_group=share_group,
            allow_modules=tuple(check_module_prefix(m) for m in allow_module or ()),
            allow_hosts=tuple(allow_host or ()), open_reads=open_reads,
            upload_limits=UploadLimits(
                max_bytes=max_upload_mb * 1024**2, max_array_bytes=max_array_mb * 1024**2
            ),
        )
    )  # fmt: skip
    service.serve()
