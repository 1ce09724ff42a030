"""CLI commands (filled in by their feature)."""

from __future__ import annotations

from host.cli.main import app  # noqa: F401
