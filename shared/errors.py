"""The one exception hierarchy of edgetailor, shared by host and device agent."""

from __future__ import annotations


class EdgeTailorError(Exception):
    """Root of every error edgetailor raises on purpose."""


class ConfigError(EdgeTailorError):
    """A setting, flag or spec given by the user is wrong."""


class ValidationError(EdgeTailorError):
    """A message, manifest or file does not follow the wire contract."""


class UnsupportedVersionError(ValidationError):
    """A message carries a protocol major version this side does not speak."""


class MessageTooLargeError(ValidationError):
    """A message exceeds the size bound for its kind."""


class IntegrityError(EdgeTailorError):
    """Content does not match its declared hash or size."""


class SignatureError(IntegrityError):
    """A manifest is unsigned, badly signed, expired, replayed or addressed elsewhere."""


class TransferError(EdgeTailorError):
    """An artifact transfer could not complete."""


class UnknownEntryError(EdgeTailorError, LookupError):
    """A registry lookup named a key that is not registered."""


class DuplicateEntryError(EdgeTailorError):
    """A registry was given the same key twice."""
