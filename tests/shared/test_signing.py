from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from shared.errors import (
    ExpiredError,
    MisaddressedError,
    ReplayError,
    SignatureError,
    UnsignedError,
    UntrustedKeyError,
    ValidationError,
)
from shared.manifest import ArtifactManifest
from shared.messages import CancelCmd, PingCmd, RollbackCmd, decode, encode
from shared.signing import (
    ReplayWindow,
    Signer,
    generate_key,
    key_id_of,
    public_key_b64,
    public_key_from_b64,
    sign_manifest,
    verify_manifest,
    verify_message,
)

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


# -- envelopes ------------------------------------------------------------------------------------
NOW = 1_900_000_000.0


def _signed_ping(signer: Signer, **kw: object) -> bytes:
    args = {"device_id": "pi-1", "seq": 7, "signer": signer, "now": NOW, **kw}
    return encode(PingCmd(), **args)  # type: ignore[arg-type]


def test_a_signed_envelope_verifies_and_names_the_key_that_signed_it() -> None:
    signer = Signer.generate()
    message = decode(_signed_ping(signer))
    assert message.auth is not None and message.auth.seq == 7
    assert verify_message(message, trusted={signer.key}, device_id="pi-1", now=NOW) == signer.key
    # Trust on first use: no pinned key yet, any valid signature passes and names its key.
    assert verify_message(message, trusted=None, device_id="pi-1", now=NOW) == signer.key


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("device_id", "pi-2"),
        ("seq", 8),
        ("exp", NOW + 10**6),
        ("msg_id", "another"),
        ("corr_id", "x"),
        ("ts", NOW + 1),
        ("schema", "cmd.rollback"),  # a rollback's fields all have defaults: {} decodes
        ("body", {"deploy_id": None, "reason": "another"}),
    ],
)
def test_changing_any_field_of_a_signed_envelope_breaks_its_signature(
    field: str, value: object
) -> None:
    signer = Signer.generate()
    body = RollbackCmd(reason="signed") if field == "body" else PingCmd()
    raw = msgspec.json.decode(
        encode(body, device_id="pi-1", seq=7, signer=signer, now=NOW)  # type: ignore[arg-type]
    )
    raw[field] = value
    message = decode(msgspec.json.encode(raw))
    with pytest.raises(SignatureError) as caught:
        verify_message(message, trusted={signer.key}, device_id=message.device_id, now=NOW)
    assert caught.value.code == "bad_signature"


def test_a_body_that_means_the_same_but_is_spelled_differently_is_not_the_signed_body() -> None:
    """The signature covers the body's bytes as sent: a re-encoding cannot slip through."""
    signer = Signer.generate()
    data = encode(CancelCmd(job_id="j"), device_id="pi-1", seq=1, signer=signer, now=NOW)
    spaced = data.replace(b'{"job_id":"j"}', b'{ "job_id": "j" }')
    with pytest.raises(SignatureError):
        verify_message(decode(spaced), trusted={signer.key}, device_id="pi-1", now=NOW)


def test_unsigned_resigned_misaddressed_and_expired_envelopes_are_refused_with_their_codes() -> (
    None
):
    host, other = Signer.generate(), Signer.generate()
    cases = [
        (encode(PingCmd(), device_id="pi-1", now=NOW), UnsignedError, "unsigned"),
        (_signed_ping(other), UntrustedKeyError, "untrusted_key"),
        (_signed_ping(host, device_id="pi-2"), MisaddressedError, "misaddressed"),
        (_signed_ping(host, now=NOW - 7200), ExpiredError, "expired"),
    ]
    for data, error, code in cases:
        with pytest.raises(error) as caught:
            verify_message(decode(data), trusted={host.key}, device_id="pi-1", now=NOW)
        assert caught.value.code == code


def test_an_envelope_with_half_of_its_signature_fields_is_malformed() -> None:
    raw = msgspec.json.decode(_signed_ping(Signer.generate()))
    del raw["sig"]
    with pytest.raises(ValidationError, match="signature"):
        decode(msgspec.json.encode(raw))
    with pytest.raises(ValidationError):
        encode(PingCmd(), seq=3)  # a sequence without a signature means nothing


def test_an_unsigned_envelope_has_no_auth_fields_on_the_wire() -> None:
    """Agents that predate signing decode what a host sends them unsigned (pings of old tools)."""
    raw = msgspec.json.decode(encode(PingCmd(), device_id="pi-1", now=NOW))
    assert not {"seq", "exp", "key", "sig"} & set(raw)
    assert decode(encode(PingCmd(), now=NOW)).auth is None


def test_a_key_names_itself_the_same_way_as_an_object_and_as_base64() -> None:
    signer = Signer.generate()
    assert key_id_of(signer.private_key.public_key()) == key_id_of(signer.key) == signer.key_id
    assert public_key_b64(public_key_from_b64(signer.key)) == signer.key
    with pytest.raises(SignatureError):
        public_key_from_b64("A" * 43 + "=" if signer.key[42] != "A" else "B" * 43 + "=")
        public_key_from_b64("not base64")


# -- replay window --------------------------------------------------------------------------------
def test_the_replay_window_tells_new_seen_and_too_old_sequence_numbers_apart() -> None:
    window = ReplayWindow(size=4)
    for seq in (1, 3, 2):  # out of order is fine
        assert window.is_new(seq)
        window.accept(seq)
    assert not window.is_new(2) and not window.is_new(3)
    window.accept(9)
    assert window.is_new(7) and not window.is_new(9)
    with pytest.raises(ReplayError):
        window.is_new(5)  # 9 - 5 = 4: outside a window of four
    with pytest.raises(ReplayError):
        window.is_new(0)


def test_the_replay_window_survives_a_restart_through_its_json() -> None:
    window = ReplayWindow(size=64)
    for seq in (10, 12, 40):
        window.accept(seq)
    again = ReplayWindow.from_json(window.to_json())
    assert again.highest == 40 and not again.is_new(12) and again.is_new(11)
    with pytest.raises(ValidationError):
        ReplayWindow.from_json(b"{]")


@given(st.lists(st.integers(min_value=1, max_value=300), max_size=200))
def test_the_replay_window_accepts_each_sequence_once_and_refuses_only_old_ones(
    sequences: list[int],
) -> None:
    window, accepted = ReplayWindow(size=32), set()
    for seq in sequences:
        try:
            new = window.is_new(seq)
        except ReplayError:
            assert seq <= window.highest - 32  # only below the window
            continue
        assert new == (seq not in accepted)
        if new:
            window.accept(seq)
            accepted.add(seq)
