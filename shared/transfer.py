"""Binary framing of artifact chunks, and the arithmetic of splitting a file into them.

A chunk travels on ``topics.artifact_chunks(sha)`` as one MQTT payload::

    magic "ETC1" | artifact sha256 (32 B) | index u32 | total u32 | offset u64 | length u32 |
    payload sha256 (32 B) | payload (length bytes)

The payload hash lets a receiver drop a chunk corrupted in transit before writing it; the whole file
is still verified against the manifest's sha256 before it is stored as valid.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import struct
from dataclasses import dataclass
from typing import Any

from shared.errors import IntegrityError, ValidationError

MAGIC = b"ETC1"
HEADER = struct.Struct("!4s32sIIQI32s")
DEFAULT_CHUNK_SIZE = 128 * 1024  # AWS IoT Core caps a payload at 128 KB
MAX_CHUNK_SIZE = 1024 * 1024


@dataclass(frozen=True)
class Chunk:
    sha256: str
    index: int
    total: int
    offset: int
    payload: bytes


def chunk_count(size: int, chunk_size: int) -> int:
    check_chunk_size(chunk_size)
    return max(1, -(-size // chunk_size))


def chunk_bounds(size: int, chunk_size: int, index: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index`` of a file of ``size`` bytes."""
    total = chunk_count(size, chunk_size)
    if not 0 <= index < total:
        raise ValidationError(f"chunk index {index} outside 0..{total - 1}")
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def check_chunk_size(chunk_size: int) -> int:
    if not 1024 <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValidationError(f"chunk size {chunk_size} outside 1 KiB..{MAX_CHUNK_SIZE} bytes")
    return chunk_size


def encode_chunk(sha256: str, index: int, total: int, offset: int, payload: bytes) -> bytes:
    header = HEADER.pack(
        MAGIC,
        bytes.fromhex(sha256),
        index,
        total,
        offset,
        len(payload),
        hashlib.sha256(payload).digest(),
    )
    return header + payload


def decode_chunk(data: bytes, *, max_payload: int = MAX_CHUNK_SIZE) -> Chunk:
    """Parse and check one chunk frame; raises ValidationError or IntegrityError."""
    if len(data) < HEADER.size:
        raise ValidationError(f"chunk frame of {len(data)} bytes is shorter than its header")
    magic, sha, index, total, offset, length, payload_sha = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise ValidationError("chunk frame has a wrong magic number")
    if length > max_payload or len(data) - HEADER.size != length:
        raise ValidationError(
            f"chunk frame declares {length} payload bytes, carries {len(data) - HEADER.size}"
        )
    if total < 1 or index >= total:
        raise ValidationError(f"chunk index {index} outside 0..{total - 1}")
    payload = data[HEADER.size :]
    if hashlib.sha256(payload).digest() != payload_sha:
        raise IntegrityError(
            f"chunk {index} payload does not match its hash (corrupted in transit)"
        )
    return Chunk(sha.hex(), index, total, offset, payload)


def no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """paho's ``on_socket_open``: send small messages at once (TCP_NODELAY).

    Chunk requests, PUBACKs and commands are small. With Nagle's algorithm each one waits until the
    peer acknowledges the previous small segment, and Linux delays that acknowledgement by up to
    40 ms: a request/answer round trip through Mosquitto (which also keeps Nagle on unless
    ``set_tcp_nodelay true``) took 92 ms in bench/transfer.py, 44 ms with our side's Nagle off,
    0.4 ms with both. Chunks themselves fill whole segments and are not affected.
    """
    with contextlib.suppress(
        OSError, AttributeError
    ):  # a websocket or TLS wrapper may not allow it
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
