"""The docs hold together: every relative link leads somewhere, every repository path they quote
exists, and the CLI reference is what the CLIs say about themselves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer

from device_agent.cli import build_parser
from host.cli import main as cli_main
from host.cli.reference import render

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CLI_MD = ROOT / "docs" / "cli.md"
# Files a user of the repository never has: the early design notes and the folder beside it.
OUTSIDE = re.compile(r"DESIGN\.md|\.\./shared")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A path inside the repository quoted in backticks, e.g. `host/select/` or `bench/results/x.json`.
REPO_PATH = re.compile(
    r"`((?:host|shared|device_agent|bench|tests|deploy|docker|docs)/[A-Za-z0-9_./-]*)`"
)
# Paths a run writes, which a fresh checkout need not have.
WRITTEN_BY_RUNS = ("bench/results/quick",)


def _prose(text: str) -> str:
    """The text outside fenced code blocks."""
    return re.sub(r"^```.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"`|\*\*|\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for line in _prose(path.read_text(encoding="utf-8")).splitlines():
        match = re.match(r"^#{1,6} (.+)$", line)
        if not match:
            continue
        slug = _slug(match.group(1))
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links() -> list[tuple[str, str]]:
    found = []
    for doc in DOCS:
        prose = re.sub(r"`[^`\n]*`", "", _prose(doc.read_text(encoding="utf-8")))
        for target in LINK.findall(prose):
            if not target.startswith(("http://", "https://", "mailto:")):
                found.append((str(doc.relative_to(ROOT)), target))
    return found


@pytest.mark.parametrize(("doc", "target"), _links(), ids=lambda v: str(v))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(doc: str, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    path = (ROOT / doc).parent / file_part if file_part else ROOT / doc
    assert path.exists(), f"{doc} links to {target}: {file_part} does not exist"
    assert path.resolve().is_relative_to(ROOT), f"{doc} links outside the repository: {target}"
    if anchor:
        assert path.suffix == ".md", f"{doc}: an anchor into a file that is not markdown: {target}"
        assert anchor in _anchors(path), f"{doc} links to {target}: no such heading in {path.name}"


def test_every_repository_path_the_docs_quote_exists() -> None:
    missing = []
    for doc in DOCS:
        for quoted in REPO_PATH.findall(doc.read_text(encoding="utf-8")):
            path = quoted.rstrip(".,")
            if path.startswith(WRITTEN_BY_RUNS):
                continue
            if not (ROOT / path).exists():
                missing.append(f"{doc.relative_to(ROOT)}: {path}")
    assert not missing, f"the docs quote paths the repository lacks: {missing}"


def test_nothing_points_outside_the_repository() -> None:
    offenders = []
    for path in [*DOCS, *ROOT.glob("host/**/*.py"), *ROOT.glob("shared/**/*.py"),
                 *ROOT.glob("device_agent/**/*.py"), *ROOT.glob("bench/**/*.py")]:  # fmt: skip
        text = path.read_text(encoding="utf-8")
        if OUTSIDE.search(text):
            offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"these mention a file outside the repository: {offenders}"


def test_the_cli_reference_is_what_the_clis_print() -> None:
    assert CLI_MD.read_text(encoding="utf-8") == render(), (
        "docs/cli.md is stale: run `python -m host.cli.reference > docs/cli.md`"
    )


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
def test_every_host_command_and_option_is_in_the_cli_reference(
    command: str, options: list[str]
) -> None:
    reference = CLI_MD.read_text(encoding="utf-8")
    assert f"### `{command}`" in reference, f"docs/cli.md has no section for `{command}`"
    section = reference.split(f"### `{command}`", 1)[1].split("\n### ", 1)[0]
    missing = [opt for opt in options if f"`{opt}" not in section]
    assert not missing, f"docs/cli.md does not document {missing} of `{command}`"


def test_every_agent_option_is_in_the_cli_reference() -> None:
    section = CLI_MD.read_text(encoding="utf-8").split("## `edgetailor-agent`", 1)[1]
    options = [
        opt
        for action in build_parser()._actions
        for opt in action.option_strings
        if opt.startswith("--") and opt != "--help"
    ]
    missing = [opt for opt in options if f"`{opt}" not in section]
    assert not missing, f"docs/cli.md does not document agent options {missing}"
