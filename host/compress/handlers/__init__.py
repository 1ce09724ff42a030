"""Technique handlers; importing this package registers every built-in handler in HANDLERS."""

from __future__ import annotations

from host.compress.handlers import lowrank, pruning, quantization, training  # noqa: F401
from host.compress.handlers.base import HANDLERS, Handler, handles

__all__ = ["HANDLERS", "Handler", "handles"]
