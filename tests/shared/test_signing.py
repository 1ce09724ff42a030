from __future__ import annotations

import msgspec
import pytest

from shared.errors import SignatureError
from shared.manifest import ArtifactManifest
from shared.signing import generate_key, sign_manifest, verify_manifest

BASE = ArtifactManifest(
    sha256="cd" * 32,
    size_bytes=4096,
    format="tflite",
    precision="int8",
    target_device="pi-1",
    sequence=5,
    expires=2_000_000_000.0,
)


def test_a_signed_manifest_verifies_with_the_host_key() -> None:
    key = generate_key()
    verify_manifest(
        sign_manifest(BASE, key),
        key.public_key(),
        device_id="pi-1",
        min_sequence=5,
        now=1_900_000_000.0,
    )


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"sha256": "ce" * 32}, "not signed by the trusted"),
        ({"size_bytes": 4097}, "not signed by the trusted"),
        ({"signature": None}, "not signed"),
        ({"signature": "!!notbase64"}, "not signed by the trusted"),
    ],
)
def test_a_tampered_or_unsigned_manifest_is_refused(change: dict, match: str) -> None:
    key = generate_key()
    signed = msgspec.structs.replace(sign_manifest(BASE, key), **change)
    with pytest.raises(SignatureError, match=match):
        verify_manifest(signed, key.public_key(), device_id="pi-1", now=1_900_000_000.0)


def test_a_manifest_signed_by_another_key_is_refused() -> None:
    with pytest.raises(SignatureError, match="trusted host key"):
        verify_manifest(
            sign_manifest(BASE, generate_key()),
            generate_key().public_key(),
            device_id="pi-1",
            now=1_900_000_000.0,
        )


def test_a_manifest_for_another_device_an_older_sequence_or_expired_is_refused() -> None:
    key = generate_key()
    signed = sign_manifest(BASE, key)
    with pytest.raises(SignatureError, match="addressed to"):
        verify_manifest(signed, key.public_key(), device_id="pi-2", now=1_900_000_000.0)
    with pytest.raises(SignatureError, match="older"):
        verify_manifest(
            signed, key.public_key(), device_id="pi-1", min_sequence=6, now=1_900_000_000.0
        )
    with pytest.raises(SignatureError, match="expired"):
        verify_manifest(signed, key.public_key(), device_id="pi-1", now=2_000_000_001.0)
