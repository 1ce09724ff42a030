"""Errors of the device agent; every one carries the machine-readable code sent to the host."""

from __future__ import annotations

from shared.errors import EdgeTailorError


class JobError(EdgeTailorError):
    """A job failed; ``code`` goes into the error response (e.g. "hash_mismatch", "timeout")."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
