"""Serves artifact chunks on request, once per artifact topic however many devices ask.

Devices drive the pace: each ChunkRequest names the indices a device wants next. The server reads
exactly those chunks from disk (one at a time, never the whole file) and publishes them on the
artifact's shared topic, where the broker fans them out to every device fetching that artifact. A
chunk published less than ``coalesce_s`` ago is not published again: the device that asked a moment
after another one receives the first copy.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from shared.errors import ValidationError
from shared.hashing import is_sha256_hex
from shared.messages import ChunkRequest
from shared.transfer import chunk_bounds, chunk_count, encode_chunk

logger = logging.getLogger(__name__)

DEFAULT_COALESCE_S = 1.0
# Enough history to check whole multi-MB transfers in tests; a deque keeps memory bounded.
REQUEST_HISTORY = 10_000
PRUNE_ABOVE = 4096  # entries of _last_sent before old ones are dropped

Publish = Callable[[str, bytes], None]  # (sha256, frame) -> publish on topics.artifact_chunks(sha)


class UnknownArtifactError(ValidationError):
    """A device asked for an artifact this host does not offer."""


@dataclass(frozen=True)
class OfferedArtifact:
    sha256: str
    path: Path
    size: int


@dataclass(frozen=True)
class RequestRecord:
    """One ChunkRequest as received, and which of its indices were actually published."""

    device_id: str
    sha256: str
    chunk_size: int
    indices: tuple[int, ...]
    published: tuple[int, ...]
    at: float  # when the host received it
    sent_at: float | None = None  # the envelope's ts: when the device made the request


class ChunkServer:
    """Answers ChunkRequests for offered artifacts by publishing chunk frames."""

    def __init__(
        self,
        publish: Publish,
        *,
        coalesce_s: float = DEFAULT_COALESCE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._publish = publish
        self.coalesce_s = coalesce_s
        self._clock = clock
        self._offers: dict[str, OfferedArtifact] = {}
        self._last_sent: dict[tuple[str, int, int], float] = {}
        self._lock = threading.Lock()
        self.requests: deque[RequestRecord] = deque(maxlen=REQUEST_HISTORY)
        self.chunks_published = 0
        self.chunks_coalesced = 0

    def offer(self, sha256: str, path: str | Path) -> OfferedArtifact:
        if not is_sha256_hex(sha256):
            raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
        path = Path(path)
        offered = OfferedArtifact(sha256, path, path.stat().st_size)
        with self._lock:
            self._offers[sha256] = offered
        return offered

    def withdraw(self, sha256: str) -> None:
        with self._lock:
            self._offers.pop(sha256, None)
            for key in [k for k in self._last_sent if k[0] == sha256]:
                del self._last_sent[key]

    def offers(self, sha256: str) -> bool:
        with self._lock:
            return sha256 in self._offers

    def handle(
        self, device_id: str, request: ChunkRequest, *, sent_at: float | None = None
    ) -> list[int]:
        """Publish the requested chunks not sent within coalesce_s; returns the published indices.

        Raises UnknownArtifactError for an artifact not offered and ValidationError for indices
        outside the file (nothing is published then).
        """
        with self._lock:
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
        now = self._clock()
        to_send: list[int] = []
        with self._lock:
            if len(self._last_sent) > PRUNE_ABOVE:
                # Only sends within coalesce_s matter; forget the rest so memory stays bounded.
                self._last_sent = {
                    k: t for k, t in self._last_sent.items() if now - t < self.coalesce_s
                }
            for index in dict.fromkeys(request.indices):  # keeps order, drops repeats
                key = (request.sha256, request.chunk_size, index)
                last = self._last_sent.get(key)
                if last is not None and now - last < self.coalesce_s:
                    self.chunks_coalesced += 1
                    continue
                self._last_sent[key] = now
                to_send.append(index)
        try:
            handle = open(offered.path, "rb")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise UnknownArtifactError(
                f"artifact {request.sha256[:12]} was offered but its file {offered.path} cannot be "
                f"read ({exc.strerror}); re-offer it"
            ) from exc
        with handle:
            for index in to_send:
                offset, length = chunk_bounds(offered.size, request.chunk_size, index)
                handle.seek(offset)
                payload = handle.read(length)
                if len(payload) != length:
                    raise ValidationError(
                        f"{offered.path} is shorter than when it was offered; re-offer it"
                    )
                self._publish(
                    request.sha256, encode_chunk(request.sha256, index, total, offset, payload)
                )
                self.chunks_published += 1
        self.requests.append(
            RequestRecord(
                device_id,
                request.sha256,
                request.chunk_size,
                tuple(request.indices),
                tuple(to_send),
                time.time(),
                sent_at,
            )
        )
        logger.debug(
            "chunks of %s for %s: asked %d, published %d",
            request.sha256[:12],
            device_id,
            len(request.indices),
            len(to_send),
        )
        return to_send
