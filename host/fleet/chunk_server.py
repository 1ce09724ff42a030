"""Serves artifact chunks on request: one stream per artifact topic, however many devices ask.

Devices drive the pace: each ChunkRequest names the indices a device wants next. The broker fans
every chunk published on the artifact's topic out to all devices fetching it, so the server keeps,
per artifact and chunk size, one stream: the chunks queued for publication, when each was last
published, and per device when it joined (its first request; it subscribed to the topic before it
sent it) and which chunks it asked for. A requested chunk is

- published at once when it has never been published, or not for ``coalesce_s``;
- not published again when it was published after the device joined: the broker delivers that copy
  to the device too, it may still be on its way;
- published again at once when the same device asks for it a second time: it lost it (a message
  dropped by a full broker queue, a corrupted frame, a reconnect), and from then on the device
  counts as joining anew;
- otherwise (published shortly before the device joined) held until ``coalesce_s`` after its last
  publication, and then published once for every device that asked for it meanwhile. Devices that
  start shortly after the first ones ride the stream those drive, and catch up from one repeat.

The host also knows who is about to ask: the Fleet calls :meth:`ChunkServer.expect` for every
device it sends a command naming the artifact. When a stream starts while such devices have not
asked yet, its first chunks wait for them, until the last one has asked (and, when the commands
came in quick succession as a rollout sends them, until no further one seems to follow) or
``coalesce_s`` has passed, so that a rollout to many boards at once sends each chunk once rather
than once for the first board and again for the ones that started a few hundred milliseconds later.

Chunks are read from disk one at a time and handed to the broker connection with at most
``max_in_flight`` unacknowledged: paho queues whatever it is given in memory, without bound, so the
server never publishes faster than the link drains, however many devices ask. They are handed over
on the thread that brings the news (a request or a PUBACK, on paho's network thread); a timer
thread hands over held chunks as they fall due.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Protocol

from shared.errors import ValidationError
from shared.hashing import is_sha256_hex
from shared.messages import ChunkRequest
from shared.transfer import chunk_bounds, chunk_count, encode_chunk

logger = logging.getLogger(__name__)

DEFAULT_COALESCE_S = 1.0
DEFAULT_MAX_IN_FLIGHT = 32  # frames handed to the connection and not yet acknowledged (4 MiB)
SESSION_IDLE_S = 60.0  # a device silent this long on a stream is forgotten; it rejoins if it asks
EXPECT_S = 60.0  # how long a command's device counts as about to ask for its artifacts
_STALE_DELIVERY_S = 30.0  # an acknowledgement this late is not waited for any longer
# Enough history to check whole multi-MB transfers in tests; a deque keeps memory bounded.
REQUEST_HISTORY = 10_000


class Delivery(Protocol):
    """What publishing returns: paho's MQTTMessageInfo, acknowledged once the broker has it."""

    mid: int

    def is_published(self) -> bool: ...


# (sha256, frame) -> publish on topics.artifact_chunks(sha); None when nothing can be awaited.
Publish = Callable[[str, bytes], Delivery | None]


class UnknownArtifactError(ValidationError):
    """A device asked for an artifact this host does not offer."""


@dataclass(frozen=True)
class OfferedArtifact:
    sha256: str
    path: Path
    size: int


@dataclass(frozen=True)
class RequestRecord:
    """One ChunkRequest as received, and which of its indices it had published (now or held)."""

    device_id: str
    sha256: str
    chunk_size: int
    indices: tuple[int, ...]
    published: tuple[int, ...]
    at: float  # when the host received it
    sent_at: float | None = None  # the envelope's ts: when the device made the request


@dataclass
class _Session:
    """One device on one stream."""

    joined: float
    last_seen: float
    asked: bytearray

    def asked_before(self, index: int) -> bool:
        return bool(self.asked[index >> 3] & (1 << (index & 7)))

    def mark(self, index: int) -> None:
        self.asked[index >> 3] |= 1 << (index & 7)


@dataclass
class _Stream:
    offered: OfferedArtifact
    chunk_size: int
    total: int
    file: BinaryIO
    last_published: dict[int, float] = field(default_factory=dict)
    queue: deque[int] = field(default_factory=deque)
    queued: set[int] = field(default_factory=set)
    held: dict[int, float] = field(default_factory=dict)  # index -> when it is due
    sessions: dict[str, _Session] = field(default_factory=dict)
    started: float = float("-inf")  # the first request after the stream was quiet
    gather_until: float = float("-inf")  # fresh chunks wait for expected devices until then
    last_active: float = float("-inf")  # the latest last_seen of its sessions
    error: str | None = None

    def enqueue(self, index: int) -> None:
        self.held.pop(index, None)
        if index not in self.queued:
            self.queued.add(index)
            self.queue.append(index)

    def idle(self) -> bool:
        return not (self.sessions or self.queue or self.held)


class ChunkServer:
    """Answers ChunkRequests for offered artifacts by publishing chunk frames."""

    def __init__(
        self,
        publish: Publish,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        session_idle_s: float = SESSION_IDLE_S,
        ready: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self.coalesce_s = coalesce_s
        self.max_in_flight = max(1, max_in_flight)
        self.session_idle_s = session_idle_s
        self._ready = ready or (lambda: True)
        self._clock = clock
        self._offers: dict[str, OfferedArtifact] = {}
        self._expected: dict[str, dict[str, float]] = {}  # sha256 -> device -> since when
        self._command_times: dict[str, deque[float]] = {}  # sha256 -> the last two expect()s
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._turn: deque[tuple[str, int]] = deque()  # streams with queued chunks, round robin
        self._in_flight: deque[tuple[Delivery, float]] = deque()
        # Ids acknowledged before their frame was counted in flight (any publish of the
        # connection reports here; the recent ones are enough).
        self._acknowledged_early: deque[int] = deque(maxlen=64)
        self._cond = threading.Condition()
        self._timer: threading.Thread | None = None
        self._pumping = False  # one thread hands chunks over at a time, in order
        self._pump_again = False
        self._closed = False
        self._last_prune = clock()
        self.requests: deque[RequestRecord] = deque(maxlen=REQUEST_HISTORY)
        self.chunks_published = 0
        self.chunks_coalesced = 0
        self.chunks_held = 0

    # -- offers ----------------------------------------------------------------------------------
    def offer(self, sha256: str, path: str | Path) -> OfferedArtifact:
        if not is_sha256_hex(sha256):
            raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
        path = Path(path)
        offered = OfferedArtifact(sha256, path, path.stat().st_size)
        with self._cond:
            previous = self._offers.get(sha256)
            self._offers[sha256] = offered
            if previous is not None and previous != offered:
                self._drop_streams(sha256)
        return offered

    def withdraw(self, sha256: str) -> None:
        with self._cond:
            self._offers.pop(sha256, None)
            self._drop_streams(sha256)

    def expect(self, sha256: str, device_id: str) -> None:
        """``device_id`` was sent a command naming this artifact: it will likely ask for it soon."""
        with self._cond:
            now = self._clock()
            expected = self._expected.setdefault(sha256, {})
            expected.pop(device_id, None)  # kept in the order of their times (see _join)
            expected[device_id] = now
            self._command_times.setdefault(sha256, deque(maxlen=2)).append(now)
            for (sha, _size), stream in self._streams.items():
                if sha == sha256 and device_id not in stream.sessions:
                    # Commands of one rollout go out one by one; a stream the first device has
                    # just started waits for the later ones too, within the same window.
                    cap = stream.started + self.coalesce_s
                    if cap > max(now, stream.gather_until):
                        self._gather(stream, cap)

    def offers(self, sha256: str) -> bool:
        with self._cond:
            return sha256 in self._offers

    def _drop_streams(self, sha256: str) -> None:
        for key in [k for k in self._streams if k[0] == sha256]:
            self._streams.pop(key).file.close()

    # -- requests (the MQTT network thread) ------------------------------------------------------
    def handle(
        self, device_id: str, request: ChunkRequest, *, sent_at: float | None = None
    ) -> list[int]:
        """Schedule the requested chunks this device will not otherwise get; returns them.

        Raises UnknownArtifactError for an artifact not offered (or whose file is gone) and
        ValidationError for indices outside the file (nothing is scheduled then).
        """
        with self._cond:
            offered = self._offers.get(request.sha256)
        if offered is None:
            raise UnknownArtifactError(
                f"device {device_id} asked for artifact {request.sha256[:12]}, which this host "
                "does not offer"
            )
        total = chunk_count(offered.size, request.chunk_size)
        bad = [i for i in request.indices if i >= total]
        if bad:
            raise ValidationError(
                f"device {device_id} asked for chunks {bad[:5]} of {request.sha256[:12]}, which "
                f"has {total} chunks of {request.chunk_size} bytes"
            )
        scheduled: list[int] = []
        with self._cond:
            stream = self._stream(offered, request.chunk_size, total)
            now = self._clock()
            session = stream.sessions.get(device_id)
            if session is None:
                session = self._join(stream, device_id, now)
            session.last_seen = now
            stream.last_active = max(stream.last_active, now)
            for index in dict.fromkeys(request.indices):  # keeps order, drops repeats
                if self._schedule(stream, session, index, now):
                    scheduled.append(index)
            if stream.queue and (stream.offered.sha256, stream.chunk_size) not in self._turn:
                self._turn.append((stream.offered.sha256, stream.chunk_size))
            self._cond.notify_all()  # the timer: a join may have released held chunks
            if now - self._last_prune > self.session_idle_s / 4:
                self._prune(now)
        self._pump()
        self.requests.append(
            RequestRecord(
                device_id,
                request.sha256,
                request.chunk_size,
                tuple(request.indices),
                tuple(scheduled),
                time.time(),
                sent_at,
            )
        )
        logger.debug(
            "chunks of %s for %s: asked %d, scheduled %d",
            request.sha256[:12],
            device_id,
            len(request.indices),
            len(scheduled),
        )
        return scheduled

    def _stream(self, offered: OfferedArtifact, chunk_size: int, total: int) -> _Stream:
        key = (offered.sha256, chunk_size)
        stream = self._streams.get(key)
        if stream is not None and stream.error is not None:
            raise UnknownArtifactError(stream.error)
        if stream is None:
            try:
                handle = open(offered.path, "rb")  # noqa: SIM115 - closed when the stream goes
            except OSError as exc:
                raise UnknownArtifactError(
                    f"artifact {offered.sha256[:12]} was offered but its file {offered.path} "
                    f"cannot be read ({exc.strerror}); re-offer it"
                ) from exc
            stream = _Stream(offered, chunk_size, total, handle)
            self._streams[key] = stream
        return stream

    def _join(self, stream: _Stream, device_id: str, now: float) -> _Session:
        """A device's first request on this stream; it may start or end a gathering."""
        quiet = now - stream.last_active > self.coalesce_s  # no session asked within the window
        session = _Session(now, now, bytearray((stream.total + 7) // 8))
        stream.sessions[device_id] = session
        expected = self._expected.get(stream.offered.sha256, {})
        expected.pop(device_id, None)
        while expected:  # oldest first: only the stale ones at the front are looked at
            other, since = next(iter(expected.items()))
            if now - since <= EXPECT_S:
                break
            del expected[other]
        if not expected:
            self._expected.pop(stream.offered.sha256, None)
            done_at = self._commands_done_at(stream.offered.sha256, now)
            if stream.gather_until > done_at:  # the last expected device is here
                self._gather(stream, done_at)
        elif quiet:
            self._gather(stream, now + self.coalesce_s)
        if quiet:
            stream.started = now
        return session

    def _gather(self, stream: _Stream, until: float) -> None:
        """Fresh chunks of this stream wait until ``until``, those already waiting included."""
        stream.gather_until = until
        for index in [i for i in stream.held if i not in stream.last_published]:
            stream.held[index] = until

    def _commands_done_at(self, sha256: str, now: float) -> float:
        """When the commands naming this artifact have probably all gone out.

        A rollout sends them one by one, a few tens of milliseconds apart, and its first devices
        may ask before the last command is sent. When the last two came close together, another
        may follow: wait two such gaps after the last. A single command waits for nothing.
        """
        times = self._command_times.get(sha256)
        if not times or len(times) < 2:
            return now
        gap = times[-1] - times[-2]
        if gap > self.coalesce_s / 4 or now - times[-1] > self.coalesce_s:
            return now
        return max(now, times[-1] + 2 * gap)

    def _schedule(self, stream: _Stream, session: _Session, index: int, now: float) -> bool:
        """Whether this device's ask makes ``index`` go out (now or held); see the module doc."""
        asked_before = session.asked_before(index)
        session.mark(index)
        if asked_before:
            session.joined = now  # it lost this one, so maybe what came with it
            if index in stream.queued:
                self.chunks_coalesced += 1
                return False
            stream.enqueue(index)
            return True
        last = stream.last_published.get(index)
        if index in stream.queued or (last is not None and last >= session.joined):
            self.chunks_coalesced += 1
            return False
        if index in stream.held:
            self.chunks_held += 1
            return False
        if last is None and now < stream.gather_until:
            stream.held[index] = stream.gather_until  # see _gather
            self.chunks_held += 1
        elif last is None or last + self.coalesce_s <= now:
            stream.enqueue(index)
        else:
            stream.held[index] = last + self.coalesce_s
            self.chunks_held += 1
        return True

    def _prune(self, now: float) -> None:
        """Forget devices that went quiet and streams nobody uses, so memory stays bounded."""
        self._last_prune = now
        for key, stream in list(self._streams.items()):
            for device_id, session in list(stream.sessions.items()):
                if now - session.last_seen > self.session_idle_s:
                    del stream.sessions[device_id]
            stream.last_active = max(
                (s.last_seen for s in stream.sessions.values()), default=float("-inf")
            )
            if stream.idle():
                del self._streams[key]
                stream.file.close()
        for sha256, expected in list(self._expected.items()):
            for device_id, since in list(expected.items()):
                if now - since > EXPECT_S:
                    del expected[device_id]
            if not expected:
                del self._expected[sha256]
        for sha256, times in list(self._command_times.items()):
            if now - times[-1] > EXPECT_S:
                del self._command_times[sha256]

    # -- sending (whichever thread has news: a request, an acknowledgement, a due time) -----------
    def wake(self, acknowledged_mid: int | None = None) -> None:
        """The connection acknowledged publish ``acknowledged_mid`` (or reconnected): send more.

        paho calls on_publish before it marks the message published, so the id is what says
        which frame left the in-flight count.
        """
        if acknowledged_mid is not None:
            with self._cond:
                kept = deque(entry for entry in self._in_flight if entry[0].mid != acknowledged_mid)
                if len(kept) == len(self._in_flight):
                    self._acknowledged_early.append(acknowledged_mid)  # not counted in yet
                self._in_flight = kept
                if not self._turn and not self._pumping:
                    return  # nothing queued (a command's PUBACK, say): held ones have the timer
        self._pump()

    def close(self) -> None:
        """Stop the timer thread, forget the streams; a later request starts afresh."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            timer, self._timer = self._timer, None
        if timer is not None and timer is not threading.current_thread():
            timer.join(timeout=5)
        with self._cond:
            for stream in self._streams.values():
                stream.file.close()
            self._streams.clear()
            self._turn.clear()
            self._in_flight.clear()
            self._closed = False

    def _pump(self) -> None:
        """Hand over chunks while some are due and the in-flight bound allows.

        Runs on the thread that brought the news, mostly paho's network thread (a request, a
        PUBACK), so a chunk goes out without a hop to another thread; held chunks that fall due
        meanwhile are handed over by the timer thread.
        """
        with self._cond:
            if self._pumping:  # another thread is at it: it will look again before it stops
                self._pump_again = True
                return
            self._pumping = True
        try:
            self._pump_until_none_due()
        except BaseException:
            with self._cond:
                self._pumping = False
            raise

    def _pump_until_none_due(self) -> None:
        while True:
            with self._cond:
                picked = self._next_chunk()
                if picked is None and self._pump_again:
                    self._pump_again = False
                    continue
                if picked is None:
                    self._pumping = False  # under the same lock as the look: no news is lost
                    if any(s.held for s in self._streams.values()):
                        self._start_timer()
                    return
                stream, index = picked
                stream.queued.discard(index)
                # Stamped before the frame is handed over: a device that joins from now on may
                # not get this copy, and _schedule will publish it again for it.
                stream.last_published[index] = self._clock()
            try:
                frame = self._frame(stream, index)
            except (OSError, ValueError) as exc:
                with self._cond:
                    if stream.file.closed:
                        continue  # withdrawn or forgotten meanwhile
                    stream.error = (
                        f"artifact {stream.offered.sha256[:12]} cannot be served: {exc}; "
                        f"re-offer its file {stream.offered.path}"
                    )
                logger.error("%s", stream.error)
                continue
            delivery = self._publish(stream.offered.sha256, frame)
            with self._cond:
                self.chunks_published += 1
                if delivery is None:
                    continue
                if delivery.mid in self._acknowledged_early:
                    self._acknowledged_early.remove(delivery.mid)  # acknowledged on the way here
                else:
                    self._in_flight.append((delivery, self._clock()))

    def _start_timer(self) -> None:
        if self._timer is None and not self._closed:
            self._timer = threading.Thread(
                target=self._timer_loop, name="edgetailor-chunks", daemon=True
            )
            self._timer.start()

    def _timer_loop(self) -> None:
        """Hand over held chunks as they fall due (also retries after a stale acknowledgement)."""
        while True:
            with self._cond:
                if self._closed:
                    return
                self._cond.wait(timeout=self._wait_s())
                if self._closed:
                    return
            self._pump()

    def _next_chunk(self) -> tuple[_Stream, int] | None:
        """The next chunk to hand over, round robin over streams; None when none may go now."""
        if self._closed or not self._ready():
            return None
        now = self._clock()
        for key, stream in self._streams.items():
            due = [i for i, at in stream.held.items() if at <= now]
            for index in sorted(due):
                stream.enqueue(index)
            if stream.queue and key not in self._turn:
                self._turn.append(key)
        while self._in_flight and (
            _acknowledged(self._in_flight[0][0]) or now - self._in_flight[0][1] > _STALE_DELIVERY_S
        ):
            self._in_flight.popleft()
        if len(self._in_flight) >= self.max_in_flight:
            # The oldest may still wait while younger ones were acknowledged: count them all.
            self._in_flight = deque(
                (d, at)
                for d, at in self._in_flight
                if not _acknowledged(d) and now - at <= _STALE_DELIVERY_S
            )
            if len(self._in_flight) >= self.max_in_flight:
                return None
        while self._turn:
            key = self._turn.popleft()
            stream = self._streams.get(key)
            if stream is None or stream.error is not None or not stream.queue:
                continue
            index = stream.queue.popleft()
            if stream.queue:
                self._turn.append(key)
            return stream, index
        return None

    def _wait_s(self) -> float:
        """How long the sender may sleep: until the next held chunk is due, at most 0.5 s."""
        now = self._clock()
        due = [at for s in self._streams.values() for at in s.held.values()]
        return min(0.5, max(0.005, min(due) - now)) if due else 0.5

    def _frame(self, stream: _Stream, index: int) -> bytes:
        offered = stream.offered
        offset, length = chunk_bounds(offered.size, stream.chunk_size, index)
        payload = os.pread(stream.file.fileno(), length, offset)  # no shared file position
        if len(payload) != length:
            raise ValidationError(f"{offered.path} is shorter than when it was offered")
        return encode_chunk(offered.sha256, index, stream.total, offset, payload)

    # -- for tests and benchmarks ----------------------------------------------------------------
    def idle(self) -> bool:
        """Every chunk due by now has been handed to the connection (held ones may follow)."""
        with self._cond:
            now = self._clock()
            return all(
                not s.queue and all(at > now for at in s.held.values())
                for s in self._streams.values()
            )

    def streams(self) -> dict[tuple[str, int], int]:
        """(sha256, chunk size) -> devices on that stream, for every stream remembered."""
        with self._cond:
            return {key: len(s.sessions) for key, s in self._streams.items()}

    def expected(self, sha256: str) -> set[str]:
        """Devices sent a command naming this artifact that have not asked for it yet."""
        with self._cond:
            return set(self._expected.get(sha256, ()))


def _acknowledged(delivery: Delivery) -> bool:
    try:
        return delivery.is_published()
    except (RuntimeError, ValueError):
        return True  # the publish failed outright: nothing will acknowledge it
