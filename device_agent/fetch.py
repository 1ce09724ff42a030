"""The chunk receiver: the device drives the pace of one artifact transfer.

The job thread runs :meth:`ArtifactFetch.run`; the MQTT network thread feeds :meth:`on_chunk`.

Pacing. The device keeps a window of chunks asked for and not yet received, and asks for the next
batch from the network thread as soon as a quarter of the window is free: the next requests are on
their way while the rest of the window still arrives, so the link does not wait a round trip per
window. The default of 64 x 128 KiB stays below Mosquitto's 20 in flight plus 100 queued per
subscriber, with room for chunks other devices asked for on the same topic. The window halves when
chunks it asked for are late (a broker drops QoS 1 messages past a subscriber's queue) and doubles
back per window received without loss; exactly the late chunks are asked for again. Late means:
asked for longer ago than ``retry_s`` (or than four times the delay chunks have been taking, a
smoothed mean plus four deviations as TCP's retransmission timer, when that is longer) and no chunk
at all arrived for as long. While chunks still flow, the missing ones are most likely queued behind
them at the broker; a board behind a fast stream that asked again would only make the host send
them twice. After a reconnect the device asks again for exactly the chunks it lacks.

Durability. Chunks are written as they land; the job thread syncs them to disk and records them in
the bitmap every ``sync_bytes``, at least every ``sync_s`` while some wait, and at the end, not once
per chunk: a sync per 128 KiB chunk on the network thread capped a transfer at the disk's sync rate
and stalled the acknowledgements. A crash loses at most the last second's chunks, fetched again.

Fan-out. Chunks arrive on the shared per-artifact topic, so some were asked for by another device:
a chunk already stored counts as a duplicate, a chunk that fails framing or does not match the
manifest is rejected and asked for again, and any other valid chunk is kept even if this device did
not ask for it, so a device that started late catches up from the stream the others drive.
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

DEFAULT_WINDOW = 64
MAX_WINDOW = 256  # a ChunkRequest names at most 256 indices
DEFAULT_INITIAL_WINDOW = 64
DEFAULT_SYNC_BYTES = 8 * 1024 * 1024
DEFAULT_SYNC_S = 1.0
_TICK_S = 0.2


class ArtifactFetch:
    """Receives one artifact into a :class:`PartialFile` until every chunk is stored."""

    def __init__(
        self,
        sha256: str,
        partial: PartialFile,
        request: Callable[[ChunkRequest], None],
        *,
        window: int = DEFAULT_WINDOW,
        initial_window: int = DEFAULT_INITIAL_WINDOW,
        retry_s: float = 3.0,
        timeout_s: float = 60.0,
        sync_bytes: int = DEFAULT_SYNC_BYTES,
        sync_s: float = DEFAULT_SYNC_S,
        cancelled: threading.Event | None = None,
    ) -> None:
        self.sha256 = sha256
        self.partial = partial
        self._request = request
        self.max_window = max(1, min(window, MAX_WINDOW))
        self.window = max(1, min(initial_window, self.max_window))
        self.retry_s = retry_s
        self.timeout_s = timeout_s
        self.sync_bytes = max(1, sync_bytes)
        self.sync_s = sync_s
        self._cancelled = cancelled or threading.Event()
        self._cond = threading.Condition()
        self._outstanding: dict[int, float] = {}  # index -> when it was last asked for
        self._cursor = 0  # every index below is stored or outstanding
        self._running = False
        self._resync = False
        self._delivered_in_window = 0
        self._asked_again: set[int] = set()  # their arrival says nothing about the delay
        self._srtt: float | None = None
        self._rttvar = 0.0
        self._unsynced_bytes = 0
        self._unsynced_since = 0.0
        self._last_arrival = time.monotonic()
        self._last_progress = time.monotonic()
        self._disk_full: JobError | None = None
        self.duplicates = 0
        self.rejected = 0
        self.written = 0
        self.requests_sent = 0
        self.window_cuts = 0

    # -- network thread --------------------------------------------------------------------------
    def on_chunk(self, payload: bytes) -> None:
        try:
            chunk = decode_chunk(payload, max_payload=self.partial.chunk_size)
            self._check_matches_manifest(chunk.sha256, chunk.index, chunk.total, chunk.offset)
        except EdgeTailorError as exc:
            with self._cond:
                self._last_arrival = time.monotonic()
                self.rejected += 1
                index = self._claimed_index(payload)
                if index is None:
                    # Which chunk was damaged is unknown: ask again for the whole window.
                    self._forget(list(self._outstanding))
                else:
                    self._forget([index])
                self._top_up()
            logger.warning("rejected a chunk of %s: %s", self.sha256[:12], exc)
            return
        with self._cond:
            self._last_arrival = time.monotonic()
            asked_at = self._outstanding.pop(chunk.index, None)
            if asked_at is not None and chunk.index not in self._asked_again:
                self._sample_delay(time.monotonic() - asked_at)
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
                self._forget([chunk.index])
                logger.warning(
                    "could not write chunk %d of %s: %s", chunk.index, self.sha256[:12], exc
                )
                self._cond.notify_all()
                return
            self.written += 1
            self._last_progress = time.monotonic()
            if not self._unsynced_bytes:
                self._unsynced_since = self._last_progress
            self._unsynced_bytes += len(chunk.payload)
            if asked_at is not None:
                self._grow()
            self._top_up()
            if self._unsynced_bytes >= self.sync_bytes or self.partial.complete():
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
            self._running = False
            self.partial.close()

    def run(self) -> TransferStats:
        started = time.monotonic()
        with self._cond:
            self._last_progress = self._last_arrival = time.monotonic()
            self._running = True
            try:
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
                            f"({self.partial.stored_count()} of {self.partial.total} stored); "
                            "check that the host is online and serves this artifact",
                        )
                    if self._resync:
                        self._resync = False
                        self._forget(list(self._outstanding))
                    else:
                        self._ask_again_for_late_chunks(now)
                    self._top_up()
                    if self._unsynced_bytes >= self.sync_bytes or (
                        self._unsynced_bytes and now - self._unsynced_since >= self.sync_s
                    ):
                        self._sync()
                    self._hash_ahead()
                    # The lock was let go while hashing (and syncing): the last chunk may have
                    # landed, and notified nobody, meanwhile.
                    if not self.partial.complete() and self._disk_full is None:
                        self._cond.wait(timeout=_TICK_S)
                self._sync()
            finally:
                self._running = False
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

    def _sync(self) -> None:
        """Sync the chunks written so far; the network thread keeps receiving meanwhile."""
        if not self._unsynced_bytes:
            return
        bitmap = self.partial.bitmap()
        self._unsynced_bytes = 0
        self._cond.release()
        try:
            self.partial.sync(bitmap)
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full_error(self.partial.stored_count(), exc) from exc
            raise JobError(
                "write_failed",
                f"could not write the download of {self.sha256[:12]} to disk: {exc.strerror}; "
                "check the disk that holds the agent's --data-dir",
            ) from exc
        finally:
            self._cond.acquire()

    def late_after_s(self) -> float:
        """How long an asked-for chunk may take before it is asked for again."""
        if self._srtt is None:
            return self.retry_s
        return max(self.retry_s, self._srtt + 4 * self._rttvar)

    def _hash_ahead(self) -> None:
        """Hash the in-order stored prefix while chunks land (see PartialFile.hash_ahead)."""
        self._cond.release()
        try:
            self.partial.hash_ahead(max_bytes=self.partial.size)
        except OSError as exc:
            raise JobError(
                "write_failed",
                f"could not read back the download of {self.sha256[:12]}: {exc}; check the disk "
                "that holds the agent's --data-dir",
            ) from exc
        finally:
            self._cond.acquire()

    def _ask_again_for_late_chunks(self, now: float) -> None:
        late_after = self.late_after_s()
        if now - self._last_arrival <= late_after:
            # Chunks still flow (asked for by this device or by others on the same topic): the
            # missing ones are most likely queued behind them at the broker, not lost.
            return
        late = [i for i, asked_at in self._outstanding.items() if now - asked_at > late_after]
        if not late:
            return
        # Asked for and not come: the request or the chunk was lost, most likely dropped by a
        # broker queue that this window overran. Ask again for exactly those, with a smaller window.
        self.window = max(1, self.window // 2)
        self._delivered_in_window = 0
        self.window_cuts += 1
        for start in range(0, len(late), MAX_WINDOW):
            batch = sorted(late[start : start + MAX_WINDOW])
            for index in batch:
                self._outstanding[index] = now
                self._asked_again.add(index)
            self._send(batch)

    # -- either thread, under the lock -----------------------------------------------------------
    def _forget(self, indices: list[int]) -> None:
        """Stop waiting for these chunks, so that the next top-up asks for them again."""
        for index in indices:
            self._outstanding.pop(index, None)
            self._asked_again.add(index)
            self._cursor = min(self._cursor, index)

    def _sample_delay(self, seconds: float) -> None:
        if self._srtt is None:
            self._srtt, self._rttvar = seconds, seconds / 2
        else:
            self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - seconds)
            self._srtt = 0.875 * self._srtt + 0.125 * seconds

    def _grow(self) -> None:
        self._delivered_in_window += 1
        if self._delivered_in_window >= self.window and self.window < self.max_window:
            self.window = min(self.max_window, self.window * 2)
            self._delivered_in_window = 0

    def _top_up(self) -> None:
        if not self._running:
            return
        room = self.window - len(self._outstanding)
        if room <= 0 or (room < max(1, self.window // 4) and self._outstanding):
            return
        wanted: list[int] = []
        index = self._cursor
        total = self.partial.total
        while index < total and len(wanted) < room:
            if not self.partial.has(index) and index not in self._outstanding:
                wanted.append(index)
            index += 1
        # Everything below `index` is now stored or outstanding.
        self._cursor = index
        if wanted:
            now = time.monotonic()
            for i in wanted:
                self._outstanding[i] = now
            self._send(wanted)

    def _send(self, indices: list[int]) -> None:
        self.requests_sent += 1
        self._request(
            ChunkRequest(sha256=self.sha256, chunk_size=self.partial.chunk_size, indices=indices)
        )
