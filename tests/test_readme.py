"""The README documents every command and option of both CLIs, so the two cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from device_agent.cli import build_parser
from host.cli import main as cli_main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")


def _host_commands() -> list[tuple[str, list[str]]]:
    cli_main._load_commands()
    root = typer.main.get_command(cli_main.app)
    found: list[tuple[str, list[str]]] = []

    def walk(command: object, path: list[str]) -> None:
        subcommands = getattr(command, "commands", None)
        if subcommands:
            for name, sub in subcommands.items():
                walk(sub, [*path, name])
            return
        options = [
            opt
            for param in getattr(command, "params", [])
            for opt in getattr(param, "opts", [])
            if opt.startswith("--") and opt != "--help"
        ]
        found.append((" ".join(path), options))

    walk(root, ["edgetailor"])
    return found


@pytest.mark.parametrize(("command", "options"), _host_commands(), ids=lambda v: str(v))
def test_every_host_command_and_option_is_in_the_readme(command: str, options: list[str]) -> None:
    assert f"### `{command}`" in README, f"README has no section for `{command}`"
    section = README.split(f"### `{command}`", 1)[1].split("\n### ", 1)[0]
    missing = [opt for opt in options if f"`{opt}" not in section]
    assert not missing, f"README does not document {missing} of `{command}`"


def test_every_agent_option_is_in_the_readme() -> None:
    section = README.split("### `edgetailor-agent`", 1)[1]
    options = [
        opt
        for action in build_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    ]
    missing = [opt for opt in options if f"`{opt}`" not in section]
    assert not missing, f"README does not document agent options {missing}"
