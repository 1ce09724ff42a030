"""Entry point of the ``edgetailor`` CLI; each command module registers its commands on ``app``."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer

from host.cli import output
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
    "host.cli.search_cmds",  # search, predict
)


VERBOSE_FLAGS = ("-v", "--verbose")


@app.callback()
def _root(
    verbose: Annotated[
        bool,
        typer.Option(
            "--verbose",
            "-v",
            help="show the libraries' log output (absl, torchao, converters); "
            "also accepted after the command",
        ),
    ] = False,
) -> None:
    output.configure(verbose)


def _load_commands() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(name)


def _hoist_verbose(argv: list[str]) -> list[str]:
    """``edgetailor compress ... -v`` means ``edgetailor -v compress ...``."""
    flags = [a for a in argv if a in VERBOSE_FLAGS]
    return flags[:1] + [a for a in argv if a not in VERBOSE_FLAGS]


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; an error the user can fix is one line on stderr and exit code 2."""
    args = _hoist_verbose(list(sys.argv[1:] if argv is None else argv))
    output.configure("-v" in args or "--verbose" in args)
    _load_commands()
    try:
        code = app(args=args, prog_name="edgetailor", standalone_mode=False)
    except EdgeTailorError as exc:
        typer.echo(f"error: {output.one_line(exc)}", err=True)
        sys.exit(2)
    except typer.Abort:
        typer.echo("aborted", err=True)
        sys.exit(130)
    except Exception as exc:
        # click's usage errors (typer vendors its own click in recent releases: match the shape).
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        ctx = getattr(exc, "ctx", None)
        hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
        typer.echo(f"error: {output.one_line(Exception(exc.format_message()))}{hint}", err=True)
        sys.exit(exc.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
