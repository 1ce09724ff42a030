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
    """A manifest or message is unsigned, badly signed, expired, replayed or addressed elsewhere.

    ``code`` is the machine-readable reason a receiver answers with (an agent refusing a command
    puts it in the error response), one per subclass.
    """

    code = "bad_signature"


class UnsignedError(SignatureError):
    """A message that must be signed carries no signature."""

    code = "unsigned"


class UntrustedKeyError(SignatureError):
    """A message is validly signed, but by a key this side has not pinned (re-signed, or a
    rotated key nobody vouched for)."""

    code = "untrusted_key"


class ExpiredError(SignatureError):
    """A signed message is past its expiry."""

    code = "expired"


class ReplayError(SignatureError):
    """A signed message was seen before, or is older than the receiver's replay window."""

    code = "replayed"


class MisaddressedError(SignatureError):
    """A signed message names another device than the one that received it."""

    code = "misaddressed"


class TransferError(EdgeTailorError):
    """An artifact transfer could not complete."""


class UnknownEntryError(EdgeTailorError, LookupError):
    """A registry lookup named a key that is not registered."""


class DuplicateEntryError(EdgeTailorError):
    """A registry was given the same key twice."""
