"""Ed25519 signatures over artifact manifests, and the device-side acceptance policy.

The host signs every manifest it sends; an agent provisioned with ``--trust-key`` refuses a manifest
that is unsigned, signed by another key, addressed to another device, older than its current
deployment sequence, or expired. ``cryptography`` is imported lazily so that an agent without a trust
key does not pay for it.
"""

from __future__ import annotations

import base64
import time
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from shared.errors import ConfigError, SignatureError
from shared.manifest import ArtifactManifest, signing_bytes

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )


def key_id_of(public_key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import hashes, serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashes.Hash(hashes.SHA256())
    digest.update(raw)
    return digest.finalize().hex()[:16]


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
