"""Entry point of the ``edgetailor`` CLI; each command module registers its commands on ``app``."""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from shared.errors import EdgeTailorError

app = typer.Typer(
    name="edgetailor",
    help="Compress PyTorch models, measure them on edge boards over MQTT, deploy the best per device.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# Modules that register commands on ``app`` when imported.
COMMAND_MODULES = (
    "host.cli.fleet_cmds",  # broker, devices, bench
    "host.cli.compress_cmds",  # compress
    "host.cli.campaign_cmds",  # campaign, status, report, demo
    "host.cli.security_cmds",  # certs, keys
    "host.cli.deploy_cmds",  # deploy, rollback
    "host.cli.service_cmds",  # serve
)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def main() -> None:
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    _load_commands()
    try:
        app()
    except EdgeTailorError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
