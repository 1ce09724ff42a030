"""The CLI reference (docs/cli.md), written from the CLIs themselves.

``python -m host.cli.reference > docs/cli.md`` prints every command of ``edgetailor`` (the typer
app) and every option of ``edgetailor-agent`` (its argparse parser) with its help and default;
``tests/test_docs.py`` checks that the file is exactly what this prints, so the reference cannot
drift from the code. Help texts live where the options are declared; change them there.
"""

from __future__ import annotations

import argparse
import inspect
import sys
from collections.abc import Iterator
from typing import Any

import typer

from device_agent.cli import build_parser
from host.cli import main as cli_main

HEADER = """\
# CLI reference

<!-- Written by `python -m host.cli.reference > docs/cli.md`; edit the help texts in host/cli/ and
device_agent/, not this file. tests/test_docs.py checks that the two agree. -->

Every command of `edgetailor` and every option of `edgetailor-agent`, with its help and default,
as `--help` prints them. How the commands fit together, what they print and their exit codes:
[the user guide](guide.md#using-the-cli); the agent's settings file and variables:
[boards](boards.md#agent-configuration).
"""


def _paragraphs(text: str | None) -> str:
    """A docstring as markdown paragraphs: each paragraph's lines joined into one."""
    if not text:
        return ""
    blocks = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in block.splitlines()) for block in blocks)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _default(value: Any) -> str | None:
    if value is None or value is False or value == () or value == []:
        return None
    if isinstance(value, bool):
        return None  # a flag: its help says what it turns on
    return str(value)


# typer builds its commands with the click it vendors: the objects below are read by duck typing.
Command = Any


def _host_rows(command: Command) -> Iterator[tuple[str, str]]:
    for param in command.params:
        if param.param_type_name == "argument":
            name = (param.metavar or param.name).upper()
        else:
            if "--help" in param.opts:
                continue
            name = ", ".join([*param.opts, *param.secondary_opts])
        help_text = getattr(param, "help", None) or ""
        extra = []
        if param.required:
            extra.append("required")
        else:
            shown = _default(param.default)
            if shown is not None and "default" not in help_text:
                extra.append(f"default: {shown}")
        envvar = getattr(param, "envvar", None)
        if envvar and envvar not in help_text:
            extra.append(f"env: {envvar}")
        meaning = help_text + (f" ({'; '.join(extra)})" if extra else "")
        yield f"`{name}`", _cell(meaning)


def _walk(command: Command, path: list[str]) -> Iterator[tuple[list[str], Command]]:
    """Every command under ``command``, a group first (with its help), then its commands."""
    subcommands = getattr(command, "commands", None)
    if subcommands:
        if len(path) > 1:
            yield path, command
        # By name: the order commands register in follows which module was imported first.
        for name in sorted(subcommands):
            yield from _walk(subcommands[name], [*path, name])
        return
    yield path, command


def _table(rows: list[tuple[str, str]]) -> list[str]:
    if not rows:
        return ["No options."]
    return ["| option | meaning |", "| --- | --- |", *(f"| {a} | {b} |" for a, b in rows)]


def host_reference() -> list[str]:
    cli_main._load_commands()
    root = typer.main.get_command(cli_main.app)
    lines = ["## `edgetailor`", "", _paragraphs(root.help), ""]
    lines += _table(list(_host_rows(root)))
    for path, command in _walk(root, ["edgetailor"]):
        lines += ["", f"### `{' '.join(path)}`", ""]
        if command.help:
            lines += [_paragraphs(command.help), ""]
        if getattr(command, "commands", None):
            lines += [f"Commands: {', '.join(f'`{name}`' for name in sorted(command.commands))}."]
            continue
        lines += _table(list(_host_rows(command)))
    return lines


def agent_reference(parser: argparse.ArgumentParser | None = None) -> list[str]:
    parser = parser or build_parser()
    rows = []
    for action in parser._actions:
        opts = [o for o in action.option_strings if o != "-h"]
        if not opts or "--help" in opts:
            continue
        help_text = (action.help or "") % {"default": action.default, "prog": parser.prog}
        extra = []
        if action.required:
            extra.append("required")
        meaning = help_text + (f" ({'; '.join(extra)})" if extra else "")
        rows.append((f"`{', '.join(opts)}`", _cell(meaning)))
    return ["", "## `edgetailor-agent`", "", _paragraphs(parser.description), "", *_table(rows)]


def render() -> str:
    return "\n".join([HEADER, *host_reference(), *agent_reference()]) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
