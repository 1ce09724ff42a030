"""The chunk receiver: the device drives the pace of one artifact transfer.

The job thread runs :meth:`ArtifactFetch.run`; the MQTT network thread feeds :meth:`on_chunk`. The
device keeps at most ``window`` chunks requested and unanswered (below Mosquitto's 20 in flight),
tops the window up as chunks land, re-asks for the window's missing chunks when nothing arrived for
``retry_s``, and after a reconnect re-asks for exactly the chunks it lacks. Chunks arrive on the
shared per-artifact topic, so some were asked for by another device: a chunk already stored counts
as a duplicate, a chunk that fails framing or does not match the manifest is rejected and asked for
again, and any other valid chunk is kept even if this device did not ask for it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from device_agent.errors import JobError
from device_agent.store import PartialFile, free_bytes, is_disk_full
from shared.errors import EdgeTailorError
from shared.messages import ChunkRequest
from shared.results import TransferStats
from shared.transfer import HEADER, MAGIC, decode_chunk

logger = logging.getLogger(__name__)

DEFAULT_WINDOW = 16


class ArtifactFetch:
    """Receives one artifact into a :class:`PartialFile` until every chunk is stored."""

    def __init__(
        self,
        sha256: str,
        partial: PartialFile,
        request: Callable[[ChunkRequest], None],
        *,
        window: int = DEFAULT_WINDOW,
        retry_s: float = 3.0,
        timeout_s: float = 60.0,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.sha256 = sha256
        self.partial = partial
        self._request = request
        self.window = max(1, min(window, 256))
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self._cancelled = cancelled or threading.Event()
        self._cond = threading.Condition()
        self._outstanding: set[int] = set()
        self._resync = False
        self._last_arrival = time.monotonic()
        self._last_progress = time.monotonic()
        self._disk_full: JobError | None = None
        self.duplicates = 0
        self.rejected = 0
        self.written = 0
        self.requests_sent = 0

    # -- network thread --------------------------------------------------------------------------
    def on_chunk(self, payload: bytes) -> None:
        try:
            chunk = decode_chunk(payload, max_payload=self.partial.chunk_size)
            self._check_matches_manifest(chunk.sha256, chunk.index, chunk.total, chunk.offset)
        except EdgeTailorError as exc:
            with self._cond:
                self.rejected += 1
                self._last_arrival = time.monotonic()
                index = self._claimed_index(payload)
                if index is None:
                    # Which chunk was damaged is unknown: ask again for the whole window.
                    self._outstanding.clear()
                else:
                    self._outstanding.discard(index)
                self._cond.notify_all()
            logger.warning("rejected a chunk of %s: %s", self.sha256[:12], exc)
            return
        with self._cond:
            self._last_arrival = time.monotonic()
            if self.partial.has(chunk.index):
                self.duplicates += 1
                return
            try:
                self.partial.write(chunk.index, chunk.payload)
            except OSError as exc:
                if is_disk_full(exc):
                    # Asking again cannot help: fail the transfer now, not at its timeout.
                    self._disk_full = self._disk_full_error(chunk.index, exc)
                    self._cond.notify_all()
                    return
                self.rejected += 1
                self._outstanding.discard(chunk.index)
                logger.warning(
                    "could not write chunk %d of %s: %s", chunk.index, self.sha256[:12], exc
                )
                self._cond.notify_all()
                return
            except EdgeTailorError as exc:
                self.rejected += 1
                self._outstanding.discard(chunk.index)
                logger.warning(
                    "could not write chunk %d of %s: %s", chunk.index, self.sha256[:12], exc
                )
                self._cond.notify_all()
                return
            self.written += 1
            self._last_progress = self._last_arrival
            self._outstanding.discard(chunk.index)
            self._cond.notify_all()

    def _disk_full_error(self, index: int, exc: OSError) -> JobError:
        directory = self.partial.part_path.parent
        try:
            free = f"{free_bytes(directory):,}"
        except OSError:
            free = "no"
        remaining = sum(self.partial.bounds(i)[1] for i in self.partial.missing())
        return JobError(
            "insufficient_storage",
            f"the disk filled up during the transfer of {self.sha256[:12]}: chunk {index} could not "
            f"be written ({exc.strerror}); {remaining:,} bytes were still to come and {directory} "
            f"has {free} bytes free. The partial file was removed; free space there and retry",
        )

    def _claimed_index(self, payload: bytes) -> int | None:
        """The index a damaged frame claims, when its header is intact and names this artifact."""
        if len(payload) < HEADER.size:
            return None
        magic, sha, index, _total, _, _, _ = HEADER.unpack_from(payload)
        if magic != MAGIC or sha.hex() != self.sha256 or not 0 <= index < self.partial.total:
            return None
        return int(index)

    def _check_matches_manifest(self, sha256: str, index: int, total: int, offset: int) -> None:
        if sha256 != self.sha256:
            raise JobError("bad_chunk", f"chunk belongs to artifact {sha256[:12]}")
        if total != self.partial.total:
            raise JobError(
                "bad_chunk",
                f"chunk says {total} chunks, manifest and chunk size give {self.partial.total}",
            )
        expected_offset, _ = self.partial.bounds(index)
        if offset != expected_offset:
            raise JobError(
                "bad_chunk", f"chunk {index} at offset {offset}, expected {expected_offset}"
            )

    def on_reconnect(self) -> None:
        """Requests in flight may be lost with the connection: ask again for what is missing."""
        with self._cond:
            self._resync = True
            self._cond.notify_all()

    # -- job thread ------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the partial file under the lock :meth:`on_chunk` writes under.

        The network thread may still hold this fetch; closing outside the lock could let its write
        land on a file descriptor number the process has meanwhile reused for another file.
        """
        with self._cond:
            self.partial.close()

    def run(self) -> TransferStats:
        started = time.monotonic()
        with self._cond:
            self._last_arrival = self._last_progress = time.monotonic()
            while not self.partial.complete():
                if self._disk_full is not None:
                    raise self._disk_full
                if self._cancelled.is_set():
                    raise JobError("cancelled", "the job was cancelled during the transfer")
                now = time.monotonic()
                if now - self._last_progress > self.timeout_s:
                    raise JobError(
                        "transfer_timeout",
                        f"no chunk of {self.sha256[:12]} arrived for {self.timeout_s:.0f} s "
                        f"({self.partial.stored_count()} of {self.partial.total} stored); check that "
                        "the host is online and serves this artifact",
                    )
                if self._resync:
                    self._resync = False
                    self._outstanding.clear()
                elif self._outstanding and now - self._last_arrival > self.retry_s:
                    # Nothing arrived for a while: the requests or their chunks were lost.
                    self._outstanding = {i for i in self._outstanding if not self.partial.has(i)}
                    if self._outstanding:
                        self._send(sorted(self._outstanding))
                    self._last_arrival = now
                self._top_up()
                self._cond.wait(timeout=0.2)
        return TransferStats(
            sha256=self.sha256,
            already_stored=False,
            chunks_total=self.partial.total,
            chunks_written=self.written,
            duplicate_chunks=self.duplicates,
            rejected_chunks=self.rejected,
            requests_sent=self.requests_sent,
            seconds=round(time.monotonic() - started, 4),
        )

    def _top_up(self) -> None:
        room = self.window - len(self._outstanding)
        if room <= 0:
            return
        wanted: list[int] = []
        for index in range(self.partial.total):
            if not self.partial.has(index) and index not in self._outstanding:
                wanted.append(index)
                if len(wanted) == room:
                    break
        if wanted:
            self._outstanding.update(wanted)
            self._send(wanted)

    def _send(self, indices: list[int]) -> None:
        self.requests_sent += 1
        self._request(
            ChunkRequest(sha256=self.sha256, chunk_size=self.partial.chunk_size, indices=indices)
        )
