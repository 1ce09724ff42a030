"""Decompression bombs in the ``.npz`` format, made without ever holding what they inflate to.

An ``.npz`` is a zip of ``.npy`` members. :func:`write_npz_bomb` writes one member whose ``.npy``
header declares ``shape`` and whose data is that many zero bytes, deflated: deflate packs 4 MiB of
zeros into about 4 KB, so 3 GiB of array fit in a file of about 3 MB. The deflate stream is one
block of the header followed by the same self-contained block of zeros repeated (each ends with a
full flush, so none refers to the one before), and the zip's sizes and CRC are those of the whole
inflated member: a reader that inflates it (``numpy.load``) gets a valid array of that size.

``lie`` writes a zip directory that claims the member inflates to its header and 1 KiB only, as a
file crafted to slip past a check of the directory alone would.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np

BLOCK = 4 * 1024**2  # bytes of zeros per repeated deflate block


def _deflate_block(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush(zlib.Z_FULL_FLUSH)


def write_npz_bomb(
    path: Path, shape: tuple[int, ...], dtype: str = "<f4", *, name: str = "x", lie: bool = False
) -> Path:
    header_io = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header_io, {"descr": dtype, "fortran_order": False, "shape": shape}
    )
    header = header_io.getvalue()
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    if nbytes % BLOCK:
        raise ValueError(f"the array's size must be a multiple of {BLOCK} bytes")
    blocks = nbytes // BLOCK
    zeros = bytes(BLOCK)
    crc = zlib.crc32(header)
    for _ in range(blocks):
        crc = zlib.crc32(zeros, crc)
    zero_block = _deflate_block(zeros)
    final = zlib.compressobj(9, zlib.DEFLATED, -15).flush(zlib.Z_FINISH)
    compressed = len(_deflate_block(header)) + blocks * len(zero_block) + len(final)
    inflated = len(header) + nbytes
    if lie:
        inflated = len(header) + 1024
    if inflated >= 2**32 or compressed >= 2**32:
        raise ValueError("a bomb of 4 GiB or more needs zip64, which this writer does not do")
    member = f"{name}.npy".encode()
    stamp = (0, 33)  # 00:00, 1980-01-01
    local = struct.pack(
        "<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, *stamp, crc, compressed, inflated, len(member), 0
    )
    with open(path, "wb") as out:
        out.write(local + member)
        out.write(_deflate_block(header))
        for _ in range(blocks):
            out.write(zero_block)
        out.write(final)
        directory_at = out.tell()
        central = struct.pack(
            "<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, *stamp, crc, compressed, inflated,
            len(member), 0, 0, 0, 0, 0, 0,
        ) + member  # fmt: skip
        out.write(central)
        out.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), directory_at, 0))
    return path
