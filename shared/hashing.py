"""sha256 helpers; artifacts are content-addressed by the hex digest of their bytes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SHA256_HEX = re.compile(r"^[0-9a-f]{64}\Z")
_READ_BLOCK = 1 << 20


def is_sha256_hex(value: str) -> bool:
    return bool(SHA256_HEX.match(value))


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_READ_BLOCK):
            digest.update(block)
    return digest.hexdigest()
