"""Ed25519 signatures: over message envelopes (every command, everything an agent sends) and over
artifact manifests, with the receiver's acceptance policy.

Envelopes: :class:`Signer` signs (shared.messages.encode takes it), :func:`verify_message` checks
a decoded message against the keys a receiver has pinned, its expiry and its address, and
:class:`ReplayWindow` tells a new sequence number from one seen before or one too old to judge.
Manifests: the host signs the manifest of every artifact it deploys; an agent refuses one that is
unsigned, signed by another key, addressed to another device, older than its current deployment
sequence, or expired. ``cryptography`` is imported lazily: the agent pays for it on its first
signature, not at import.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import time
from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING, Self

import msgspec

from shared.errors import (
    ConfigError,
    ExpiredError,
    MisaddressedError,
    ReplayError,
    SignatureError,
    UnsignedError,
    UntrustedKeyError,
    ValidationError,
)
from shared.manifest import ArtifactManifest, signing_bytes
from shared.messages import Message

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def key_id_of(public_key: Ed25519PublicKey | str) -> str:
    """A short, stable name of a public key (the first 16 hex digits of the SHA-256 of its raw
    bytes), given as a key object or as the base64 text that envelopes carry."""
    raw = _raw_public(public_key) if isinstance(public_key, str) else _public_bytes(public_key)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_b64(public_key: Ed25519PublicKey) -> str:
    """The raw public key in standard base64: how envelopes, pins and birth messages carry it."""
    return base64.b64encode(_public_bytes(public_key)).decode("ascii")


@functools.lru_cache(maxsize=16384)
def public_key_from_b64(text: str) -> Ed25519PublicKey:
    """The key object of a base64 public key (cached, one per device of a large fleet: a host
    sees the same keys again and again); SignatureError when it is not one."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        return Ed25519PublicKey.from_public_bytes(_raw_public(text))
    except ValueError as exc:
        raise SignatureError(f"not an Ed25519 public key: {text[:60]!r}") from exc


def _public_bytes(public_key: Ed25519PublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def _raw_public(text: str) -> bytes:
    raw = _strict_b64(text, "public key")
    if len(raw) != 32:
        raise SignatureError(f"an Ed25519 public key has 32 bytes, not {len(raw)}")
    return raw


def _strict_b64(text: str, what: str) -> bytes:
    """Decode canonical base64 only: b64decode ignores the unused low bits of the last character,
    so without the round trip several strings would decode to the same bytes."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureError(f"the {what} is not base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise SignatureError(f"the {what} is not canonical base64")
    return raw


class Signer:
    """An Ed25519 private key that signs envelopes (shared.messages.EnvelopeSigner)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self.private_key = private_key
        self.key = public_key_b64(private_key.public_key())
        self.key_id = key_id_of(self.key)

    @classmethod
    def generate(cls) -> Self:
        return cls(generate_key())

    @classmethod
    def from_file(cls, path: str | Path) -> Self:
        return cls(load_private_key(path))

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private_key.sign(data)).decode("ascii")

    def __repr__(self) -> str:
        return f"Signer(key_id={self.key_id})"


def verify_message(
    message: Message,
    *,
    trusted: Collection[str] | None,
    device_id: str | None = None,
    now: float | None = None,
) -> str:
    """Check a decoded message's signature; return the base64 key that signed it.

    ``trusted`` holds the pinned public keys (base64); None accepts any key whose signature is
    valid (trust on first use: the caller pins the returned key). ``device_id``, when given, must be
    the device the message names. Raises a SignatureError subclass whose ``code`` says why: the
    signature is checked before the key is judged, so a tampered message is ``bad_signature`` and
    a valid one by a key not pinned is ``untrusted_key``.
    """
    from cryptography.exceptions import InvalidSignature

    auth = message.auth
    what = f"{message.schema} {message.msg_id}"
    if auth is None:
        raise UnsignedError(f"{what} is not signed")
    public = public_key_from_b64(auth.key)
    try:
        public.verify(_strict_b64(auth.sig, "signature"), auth.signed)
    except InvalidSignature as exc:
        raise SignatureError(f"{what} has a signature that does not match its content") from exc
    if trusted is not None and auth.key not in trusted:
        raise UntrustedKeyError(
            f"{what} is signed by key {key_id_of(auth.key)}, which is not the pinned key"
        )
    if device_id is not None and message.device_id != device_id:
        raise MisaddressedError(f"{what} is addressed to {message.device_id!r}, not {device_id!r}")
    now = time.time() if now is None else now
    if auth.exp < now:
        raise ExpiredError(
            f"{what} expired {now - auth.exp:.0f} s ago (at {auth.exp:.0f}, this clock says "
            f"{now:.0f}); if it was just sent, check this clock (NTP)"
        )
    return auth.key


class ReplayWindow:
    """Which sequence numbers of one signer have been accepted: a sliding window as IPsec and DTLS
    keep one (RFC 4303 section 3.4.3, RFC 6347 section 4.1.2.6).

    Commands may arrive out of order (several host processes, a command re-sent after a newer
    one), so a receiver cannot just demand a growing number. It keeps the highest sequence it
    accepted and a bit per each of the ``size`` numbers below it: a higher number is new, a number
    inside the window is new unless its bit is set, and a number below the window is too old to
    tell apart from a replay and is refused. Pure logic; the caller persists :meth:`to_json`.
    """

    def __init__(self, size: int = 1024, highest: int = 0, seen: int = 0) -> None:
        if size < 1:
            raise ConfigError(f"a replay window needs at least one slot, not {size}")
        self.size = size
        self.highest = highest
        self._seen = seen & ((1 << size) - 1)  # bit i: highest - i was accepted

    def is_new(self, seq: int) -> bool:
        """True for a number never accepted, False for one accepted before (a duplicate); raises
        ReplayError for one below the window (or not positive)."""
        if seq < 1:
            raise ReplayError(f"sequence {seq} is not a valid sequence number")
        if seq > self.highest:
            return True
        offset = self.highest - seq
        if offset >= self.size:
            raise ReplayError(
                f"sequence {seq} is older than this device's replay window (it has accepted "
                f"{self.highest}; the window keeps the last {self.size})"
            )
        return not (self._seen >> offset) & 1

    def accept(self, seq: int) -> None:
        """Record ``seq`` as accepted (call after :meth:`is_new` said it is new)."""
        if not self.is_new(seq):
            return
        if seq > self.highest:
            shift = seq - self.highest
            self._seen = ((self._seen << shift) | 1) & ((1 << self.size) - 1)
            self.highest = seq
        else:
            self._seen |= 1 << (self.highest - seq)

    def to_json(self) -> bytes:
        return msgspec.json.encode(
            {"size": self.size, "highest": self.highest, "seen": format(self._seen, "x")}
        )

    @classmethod
    def from_json(cls, data: bytes) -> Self:
        try:
            raw = msgspec.json.decode(data, type=dict[str, int | str])
            return cls(int(raw["size"]), int(raw["highest"]), int(str(raw["seen"]), 16))
        except (msgspec.DecodeError, KeyError, ValueError, TypeError) as exc:
            raise ValidationError(f"unreadable replay window: {exc}") from exc


def generate_key() -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    return Ed25519PrivateKey.generate()


def save_private_key(key: Ed25519PrivateKey, path: str | Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    Path(path).write_bytes(pem)
    Path(path).chmod(0o600)


def save_public_key(key: Ed25519PublicKey, path: str | Path) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    Path(path).write_bytes(pem)


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read signing key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} is not an Ed25519 private key")
    return key


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read trust key {path}: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path} is not an Ed25519 public key")
    return key


def sign_manifest(manifest: ArtifactManifest, key: Ed25519PrivateKey) -> ArtifactManifest:
    unsigned = msgspec.structs.replace(manifest, key_id=key_id_of(key.public_key()), signature=None)
    signature = key.sign(signing_bytes(unsigned))
    return msgspec.structs.replace(unsigned, signature=base64.b64encode(signature).decode("ascii"))


def verify_manifest(
    manifest: ArtifactManifest,
    trusted: Ed25519PublicKey,
    *,
    device_id: str,
    min_sequence: int = 0,
    now: float | None = None,
) -> None:
    """Raise SignatureError unless ``manifest`` is signed by ``trusted`` and acceptable here."""
    from cryptography.exceptions import InvalidSignature

    if not manifest.signature:
        raise SignatureError(f"manifest {manifest.sha256[:12]} is not signed")
    try:
        raw = base64.b64decode(manifest.signature, validate=True)
        # b64decode ignores the unused low bits of the last character: without this check three
        # different signature strings verify, and a flipped bit in them would go unnoticed.
        if base64.b64encode(raw).decode("ascii") != manifest.signature:
            raise ValueError("signature is not canonical base64")
        trusted.verify(raw, signing_bytes(manifest))
    except (InvalidSignature, ValueError) as exc:
        raise SignatureError(
            f"manifest {manifest.sha256[:12]} is not signed by the trusted host key"
        ) from exc
    if manifest.target_device is not None and manifest.target_device != device_id:
        raise SignatureError(
            f"manifest {manifest.sha256[:12]} is addressed to {manifest.target_device!r}, "
            f"not {device_id!r}"
        )
    if manifest.sequence < min_sequence:
        raise SignatureError(
            f"manifest {manifest.sha256[:12]} has sequence {manifest.sequence}, older than this "
            f"device's {min_sequence} (replay or rollback refused)"
        )
    if manifest.expires is not None and manifest.expires < (time.time() if now is None else now):
        raise SignatureError(f"manifest {manifest.sha256[:12]} expired")
