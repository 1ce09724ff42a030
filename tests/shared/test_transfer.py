from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.errors import IntegrityError, ValidationError
from shared.hashing import sha256_bytes
from shared.transfer import HEADER, chunk_bounds, chunk_count, decode_chunk, encode_chunk

SHA = sha256_bytes(b"artifact")


def test_a_chunk_round_trips() -> None:
    frame = encode_chunk(SHA, 2, 5, 2048, b"payload")
    chunk = decode_chunk(frame)
    assert (chunk.sha256, chunk.index, chunk.total, chunk.offset, chunk.payload) == (
        SHA,
        2,
        5,
        2048,
        b"payload",
    )


def test_a_flipped_payload_bit_is_detected() -> None:
    frame = bytearray(encode_chunk(SHA, 0, 1, 0, b"x" * 100))
    frame[-1] ^= 0x01
    with pytest.raises(IntegrityError, match="corrupted"):
        decode_chunk(bytes(frame))


def test_a_truncated_frame_is_rejected() -> None:
    frame = encode_chunk(SHA, 0, 1, 0, b"x" * 100)
    with pytest.raises(ValidationError):
        decode_chunk(frame[:-1])
    with pytest.raises(ValidationError):
        decode_chunk(frame[: HEADER.size - 1])


def test_an_index_beyond_the_total_is_rejected() -> None:
    with pytest.raises(ValidationError):
        decode_chunk(encode_chunk(SHA, 3, 3, 0, b"x"))


def test_chunk_arithmetic_covers_the_file_exactly() -> None:
    size, chunk = 10_000, 4096
    assert chunk_count(size, chunk) == 3
    spans = [chunk_bounds(size, chunk, i) for i in range(3)]
    assert spans == [(0, 4096), (4096, 4096), (8192, 1808)]
    with pytest.raises(ValidationError):
        chunk_bounds(size, chunk, 3)
    with pytest.raises(ValidationError):
        chunk_count(size, 10)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_frames_raise_only_contract_errors(data: bytes) -> None:
    try:
        decode_chunk(data)
    except (ValidationError, IntegrityError):
        pass


def test_no_delay_turns_nagle_off_on_the_socket_paho_opens() -> None:
    import socket

    from shared.transfer import no_delay

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        no_delay(None, None, sock)
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    no_delay(None, None, object())  # a transport without socket options is left alone
