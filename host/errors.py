"""Host-side errors; all derive from shared.errors.EdgeTailorError."""

from __future__ import annotations

from shared.errors import ConfigError, EdgeTailorError

__all__ = [
    "CompressionError",
    "ConfigError",
    "ConflictError",
    "DataError",
    "DeviceUnavailableError",
    "EdgeTailorError",
    "ExportError",
    "HostError",
    "JobFailedError",
    "JobTimeoutError",
    "ModelSpecError",
    "NotAllowedError",
    "NotFoundError",
    "UnknownDeviceError",
]


class HostError(EdgeTailorError):
    """Base of errors raised only on the host."""


class ConflictError(HostError):
    """What a request names exists but is not in a state that allows it (a campaign with no
    selection yet, a campaign id taken by another spec)."""


class DeviceUnavailableError(HostError):
    """A device is unknown, offline past a deadline, or lacks a needed runtime."""


class JobFailedError(HostError):
    """A device reported an error for a job."""

    def __init__(self, message: str, code: str = "job_failed") -> None:
        super().__init__(message)
        self.code = code


class JobTimeoutError(HostError):
    """No final answer for a job arrived before its deadline."""


class NotAllowedError(ConfigError):
    """A request names something its caller may not use: a file on the service's machine, a module
    the operator did not allow, or an action beyond its token's scope. The message says how to
    allow it."""


class NotFoundError(ConfigError):
    """A request names something this host does not have: a builtin, a search space, an uploaded
    artifact, a device."""


class UnknownDeviceError(NotFoundError):
    """A request names a device this host has never seen (on its broker or in its database)."""


class ModelSpecError(ConfigError):
    """A model spec cannot be resolved to a module and example inputs."""


class DataError(ConfigError):
    """A data spec cannot be loaded or its arrays do not fit together."""


class CompressionError(HostError):
    """A technique could not be applied (impossible ratio, unsupported layer, ...)."""


class ExportError(HostError):
    """A model could not be exported; the message names the layer or op when it can."""
