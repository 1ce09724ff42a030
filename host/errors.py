"""Host-side errors; all derive from shared.errors.EdgeTailorError."""

from __future__ import annotations

from shared.errors import ConfigError, EdgeTailorError

__all__ = [
    "CompressionError",
    "ConfigError",
    "DataError",
    "DeviceUnavailableError",
    "EdgeTailorError",
    "ExportError",
    "HostError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelSpecError",
]


class HostError(EdgeTailorError):
    """Base of errors raised only on the host."""


class DeviceUnavailableError(HostError):
    """A device is unknown, offline past a deadline, or lacks a needed runtime."""


class JobFailedError(HostError):
    """A device reported an error for a job."""

    def __init__(self, message: str, code: str = "job_failed") -> None:
        super().__init__(message)
        self.code = code


class JobTimeoutError(HostError):
    """No final answer for a job arrived before its deadline."""


class ModelSpecError(ConfigError):
    """A model spec cannot be resolved to a module and example inputs."""


class DataError(ConfigError):
    """A data spec cannot be loaded or its arrays do not fit together."""


class CompressionError(HostError):
    """A technique could not be applied (impossible ratio, unsupported layer, ...)."""


class ExportError(HostError):
    """A model could not be exported; the message names the layer or op when it can."""
