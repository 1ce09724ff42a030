"""The README is the front door: short, the two commands, a tour, and where to read on."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")


def test_the_readme_fits_in_300_lines() -> None:
    lines = README.count("\n") + 1
    assert lines <= 300, f"README.md has {lines} lines: move the rest to docs/"


def test_the_readme_gives_the_two_commands_and_a_tour() -> None:
    assert "## The two commands" in README
    assert "make demo" in README and "make test" in README
    assert "## A ten-minute tour" in README


def test_the_readme_sends_the_reader_to_every_doc() -> None:
    table = README.split("## Where to read on", 1)[1]
    linked = set(re.findall(r"\]\((docs/[^)#]+\.md)", table))
    every = {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}
    assert every <= linked, f"README's reading table misses {sorted(every - linked)}"
