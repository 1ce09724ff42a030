"""Content-addressed artifact store and resumable partial downloads.

Layout under the data dir::

    store/{sha256}.{format}     complete, verified artifacts (only ever created by os.replace)
    partial/{sha256}.part       preallocated file, chunks written at their offsets
    partial/{sha256}.have       header (magic, chunk size, file size) + bitmap of stored chunks

Paths are built from validated hex digests and a closed set of formats only, so a manifest cannot
steer a write outside the data dir. The bitmap is updated after the chunks' bytes are synced (in
batches, see ``PartialFile.sync``), so after a crash it may under-report (a chunk is fetched again)
but never claims a chunk that is not on disk.

Disk space: the store has a budget (``--max-store-mb``, by default a quarter of the filesystem) and
keeps a reserve of free space for the journal, outbox and results. Before a transfer starts,
:meth:`ArtifactStore.make_room` evicts the least recently used artifacts (never the active or the
previous release, nor what the running job uses) until the artifact fits, or fails the job with
``insufficient_storage`` naming the bytes needed and free. Space is counted per inode, so a release
hard-linked to its store file is counted once.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import shutil
import struct
from collections.abc import Iterator
from pathlib import Path

from device_agent.errors import JobError
from shared.errors import ValidationError
from shared.fsutil import fsync_dir
from shared.hashing import is_sha256_hex, sha256_file
from shared.transfer import chunk_bounds, chunk_count

logger = logging.getLogger(__name__)

FORMATS = ("tflite", "onnx", "npz")
_HAVE_HEADER = struct.Struct("!4sIQ")
_HAVE_MAGIC = b"ETH1"
DEFAULT_BUDGET_FRACTION = 0.25
# Free space kept for the journal, outbox and results: 5% of the filesystem, within these bounds.
RESERVE_MIN_BYTES = 512 * 1024
RESERVE_MAX_BYTES = 64 * 1024 * 1024


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path) -> int:
    return shutil.disk_usage(path).free


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _checked(sha256: str, fmt: str) -> tuple[str, str]:
    if not is_sha256_hex(sha256):
        raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
    if fmt not in FORMATS:
        raise ValidationError(f"unknown artifact format {fmt!r}; known: {', '.join(FORMATS)}")
    return sha256, fmt


class PartialFile:
    """One artifact being received: the preallocated file and its persisted chunk bitmap."""

    def __init__(self, part: Path, have: Path, size: int, chunk_size: int) -> None:
        self.part_path = part
        self.have_path = have
        self.size = size
        self.chunk_size = chunk_size
        self.total = chunk_count(size, chunk_size)
        self._bits = bytearray((self.total + 7) // 8)
        self._load_or_create()
        self._part_fd = os.open(self.part_path, os.O_RDWR)
        self._have_fd = os.open(self.have_path, os.O_RDWR)
        self._hasher = hashlib.sha256()
        self._hashed = 0  # chunks 0.._hashed-1 have been read back into _hasher

    def _load_or_create(self) -> None:
        expected_len = _HAVE_HEADER.size + len(self._bits)
        if self.part_path.exists() and self.have_path.exists():
            raw = self.have_path.read_bytes()
            if len(raw) == expected_len and self.part_path.stat().st_size == self.size:
                magic, chunk_size, size = _HAVE_HEADER.unpack_from(raw)
                if magic == _HAVE_MAGIC and chunk_size == self.chunk_size and size == self.size:
                    self._bits[:] = raw[_HAVE_HEADER.size :]
                    logger.info(
                        "resuming %s: %d of %d chunks already on disk",
                        self.part_path.name,
                        self.stored_count(),
                        self.total,
                    )
                    return
            # Another chunk size or a damaged bitmap: offsets no longer line up, start over.
            logger.info("discarding incompatible partial download %s", self.part_path.name)
        with open(self.part_path, "wb") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, self.size)
            except OSError as exc:
                if is_disk_full(exc):
                    handle.close()
                    self.part_path.unlink(missing_ok=True)
                    raise JobError(
                        "insufficient_storage",
                        f"cannot reserve {self.size:,} bytes for {self.part_path.stem[:12]}: "
                        f"{free_bytes(self.part_path.parent):,} bytes free on "
                        f"{self.part_path.parent}; free space there",
                    ) from exc
                handle.truncate(self.size)  # the filesystem cannot preallocate
            except AttributeError:
                handle.truncate(self.size)
        header = _HAVE_HEADER.pack(_HAVE_MAGIC, self.chunk_size, self.size)
        with open(self.have_path, "wb") as handle:
            handle.write(header + bytes(self._bits))
            handle.flush()
            os.fsync(handle.fileno())

    def has(self, index: int) -> bool:
        return bool(self._bits[index >> 3] & (1 << (index & 7)))

    def stored_count(self) -> int:
        return int.from_bytes(self._bits, "little").bit_count()  # C speed: called per chunk

    def missing(self) -> list[int]:
        return [i for i in range(self.total) if not self.has(i)]

    def complete(self) -> bool:
        return self.stored_count() == self.total

    def bounds(self, index: int) -> tuple[int, int]:
        return chunk_bounds(self.size, self.chunk_size, index)

    def write(self, index: int, payload: bytes) -> None:
        """Write one chunk at its offset; it counts as stored now, and on disk after sync()."""
        offset, length = self.bounds(index)
        if len(payload) != length:
            raise ValidationError(f"chunk {index} has {len(payload)} bytes, expected {length}")
        os.pwrite(self._part_fd, payload, offset)
        self._bits[index >> 3] |= 1 << (index & 7)

    def bitmap(self) -> bytes:
        """The chunks written so far, to hand to :meth:`sync` once their bytes should be durable."""
        return bytes(self._bits)

    def sync(self, bitmap: bytes | None = None) -> None:
        """Make the chunks of ``bitmap`` (default: all written so far) durable and record them.

        One fdatasync covers many chunks: syncing each 128 KiB chunk capped a transfer at the
        disk's sync rate. The bytes are synced before the bitmap names them, so after a crash the
        bitmap may under-report, never over-report. Chunks written while this runs stay recorded
        in memory and are named by the next sync.
        """
        if self._part_fd < 0:
            return
        bitmap = self.bitmap() if bitmap is None else bitmap
        os.fdatasync(self._part_fd)
        os.pwrite(self._have_fd, bitmap, _HAVE_HEADER.size)

    def hash_ahead(self, max_bytes: int = 8 * 1024 * 1024) -> None:
        """Read the stored chunks that follow the hashed prefix back into the file's sha256.

        Called while the transfer runs, so that checking the complete file costs only its tail
        rather than a second pass over all of it. What is hashed is read back from the file, as
        a check after the transfer would; a chunk once stored is never written again.
        """
        if self._part_fd < 0:
            return
        done = 0
        while done < max_bytes and self._hashed < self.total and self.has(self._hashed):
            offset, length = self.bounds(self._hashed)
            data = os.pread(self._part_fd, length, offset)
            if len(data) != length:
                raise OSError(f"{self.part_path} is shorter than its {self.size} bytes")
            self._hasher.update(data)
            self._hashed += 1
            done += length

    def digest(self) -> str | None:
        """The whole file's sha256 once :meth:`hash_ahead` has read all of it, else None."""
        return self._hasher.hexdigest() if self._hashed == self.total else None

    def close(self) -> None:
        for fd in (self._part_fd, self._have_fd):
            try:
                os.close(fd)
            except OSError:
                pass
        self._part_fd = self._have_fd = -1

    def discard(self) -> None:
        self.close()
        for path in (self.part_path, self.have_path):
            path.unlink(missing_ok=True)


class ArtifactStore:
    """Complete artifacts by sha256, plus the partial downloads that will become them."""

    def __init__(self, data_dir: Path, max_bytes: int | None = None) -> None:
        self.data_dir = data_dir
        self.store_dir = data_dir / "store"
        self.partial_dir = data_dir / "partial"
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        total = shutil.disk_usage(data_dir).total
        self.max_bytes = max_bytes or int(total * DEFAULT_BUDGET_FRACTION)
        self.reserve_bytes = min(RESERVE_MAX_BYTES, max(RESERVE_MIN_BYTES, total // 20))

    def path_of(self, sha256: str, fmt: str) -> Path:
        sha256, fmt = _checked(sha256, fmt)
        return self.store_dir / f"{sha256}.{fmt}"

    def has(self, sha256: str, fmt: str, size: int) -> bool:
        path = self.path_of(sha256, fmt)
        found = path.is_file() and path.stat().st_size == size
        if found:
            try:
                os.utime(path)  # store files never change, so mtime can say when one was last used
            except OSError:
                pass
        return found

    # -- disk budget -----------------------------------------------------------------------------
    def _files(self) -> Iterator[Path]:
        for directory in (self.store_dir, self.partial_dir, self.data_dir / "releases"):
            if directory.is_dir():
                yield from (p for p in directory.rglob("*") if p.is_file() and not p.is_symlink())

    def used_bytes(self, exclude: Path | None = None) -> int:
        """Bytes taken by artifacts, partial downloads and releases, each inode counted once."""
        seen: set[tuple[int, int]] = set()
        total = 0
        for path in self._files():
            if exclude is not None and path == exclude:
                continue
            try:
                info = path.stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
        return total

    def _eviction_order(self, keep: set[str]) -> list[Path]:
        """Stale partial downloads first, then complete artifacts, least recently used first."""
        partials = [p for p in self.partial_dir.glob("*.part") if p.stem not in keep]
        stored = [p for p in self.store_dir.iterdir() if p.is_file() and p.stem not in keep]

        def mtime(path: Path) -> float:
            try:
                return path.stat().st_mtime
            except OSError:
                return 0.0

        return sorted(partials, key=mtime) + sorted(stored, key=mtime)

    def _evict(self, path: Path) -> None:
        if path.suffix == ".part":
            path.with_suffix(".have").unlink(missing_ok=True)
        path.unlink(missing_ok=True)
        logger.info("evicted %s from the store to make room", path.name)

    def make_room(self, sha256: str, fmt: str, size: int, keep: set[str]) -> None:
        """Evict until an artifact of ``size`` bytes fits budget and free space, or raise."""
        sha256, fmt = _checked(sha256, fmt)
        own = self.partial_dir / f"{sha256}.part"
        keep = keep | {sha256}
        victims = self._eviction_order(keep)
        evictable = sum(_size(p) for p in victims)
        if size > self.max_bytes and free_bytes(self.data_dir) + evictable >= size:
            raise JobError(
                "insufficient_storage",
                f"artifact {sha256[:12]} has {size:,} bytes, more than the whole store budget of "
                f"{self.max_bytes:,} bytes; raise --max-store-mb",
            )
        while True:
            try:
                allocated = min(size, own.stat().st_blocks * 512)
            except OSError:
                allocated = 0
            used = self.used_bytes(exclude=own)
            free = free_bytes(self.data_dir)
            needed = size - allocated
            if used + size <= self.max_bytes and free - needed >= self.reserve_bytes:
                return
            if not victims:
                break
            self._evict(victims.pop(0))
        if free - needed < self.reserve_bytes:
            raise JobError(
                "insufficient_storage",
                f"not enough disk space for artifact {sha256[:12]}: it needs {needed:,} bytes "
                f"(and {self.reserve_bytes:,} bytes are kept free for results), but "
                f"{self.data_dir} has {free:,} bytes free; free space there or move --data-dir "
                "to a larger filesystem",
            )
        raise JobError(
            "insufficient_storage",
            f"artifact {sha256[:12]} ({size:,} bytes) does not fit in the store budget: "
            f"{used:,} of {self.max_bytes:,} bytes are taken by the active and previous models "
            "and the running job; raise --max-store-mb",
        )

    def discard_partials(self, keep: set[str]) -> None:
        """Remove partial downloads no pending job will resume (left by a crash or an old version)."""
        for part in self.partial_dir.glob("*.part"):
            if part.stem not in keep:
                logger.info("removing stale partial download %s", part.name)
                self._evict(part)
        for have in self.partial_dir.glob("*.have"):
            if have.stem not in keep and not have.with_suffix(".part").exists():
                have.unlink(missing_ok=True)

    def open_partial(self, sha256: str, fmt: str, size: int, chunk_size: int) -> PartialFile:
        sha256, fmt = _checked(sha256, fmt)
        return PartialFile(
            self.partial_dir / f"{sha256}.part",
            self.partial_dir / f"{sha256}.have",
            size,
            chunk_size,
        )

    def commit(self, partial: PartialFile, sha256: str, fmt: str) -> Path:
        """Verify the complete partial file against ``sha256`` and move it into the store."""
        partial.sync()  # durable before it is renamed into the store
        partial.hash_ahead(max_bytes=partial.size)
        actual = partial.digest() or sha256_file(partial.part_path)
        partial.close()
        actual_size = partial.part_path.stat().st_size
        if actual_size != partial.size or actual != sha256:
            partial.discard()
            raise JobError(
                "hash_mismatch",
                f"artifact received as {actual_size} bytes with sha256 {actual[:16]}..., but the "
                f"manifest says {partial.size} bytes and {sha256[:16]}...; nothing was stored. "
                "Check that the host serves the file the manifest describes.",
            )
        target = self.path_of(sha256, fmt)
        os.replace(partial.part_path, target)
        partial.have_path.unlink(missing_ok=True)
        try:
            fsync_dir(self.store_dir)
        except OSError:
            pass
        logger.info("stored artifact %s (%d bytes)", target.name, actual_size)
        return target
