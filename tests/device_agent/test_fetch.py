"""The chunk receiver in-process: its window, its pipelined requests, late chunks, batched syncs.

The test plays the host: it reads the requests the fetch makes and answers them (or not) with real
frames; the fetch writes into a real partial file of the agent's store.
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_agent.fetch import ArtifactFetch
from device_agent.store import ArtifactStore
from shared.hashing import sha256_bytes
from shared.messages import ChunkRequest
from shared.results import TransferStats
from shared.transfer import chunk_bounds, chunk_count, encode_chunk

CHUNK = 1024
HAVE_HEADER = struct.Struct("!4sIQ")


class Host:
    """Collects the fetch's requests; frames the chunks the test decides to answer with."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.sha = sha256_bytes(data)
        self.total = chunk_count(len(data), CHUNK)
        self.requests: list[list[int]] = []
        self._cond = threading.Condition()

    def __call__(self, request: ChunkRequest) -> None:
        with self._cond:
            self.requests.append(list(request.indices))
            self._cond.notify_all()

    def frame(self, index: int) -> bytes:
        offset, length = chunk_bounds(len(self.data), CHUNK, index)
        return encode_chunk(
            self.sha, index, self.total, offset, self.data[offset : offset + length]
        )

    def wait_requests(self, count: int, timeout: float = 10.0) -> list[list[int]]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.requests) >= count, timeout):
                raise TimeoutError(f"{len(self.requests)} requests, waited for {count}")
            return [list(r) for r in self.requests]

    def asked(self) -> list[int]:
        with self._cond:
            return [i for r in self.requests for i in r]


class Running:
    """ArtifactFetch.run on its own thread, as the agent's job thread runs it."""

    def __init__(self, fetch: ArtifactFetch) -> None:
        self.fetch = fetch
        self.stats: TransferStats | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.stats = self.fetch.run()
        except BaseException as exc:  # noqa: BLE001 -- handed to the test
            self.error = exc

    def result(self, timeout: float = 10.0) -> TransferStats:
        self.thread.join(timeout)
        if self.error is not None:
            raise self.error
        assert self.stats is not None, "the fetch did not finish"
        return self.stats


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(tmp_path / "agent")


@pytest.fixture
def host() -> Host:
    return Host(os.urandom(40 * CHUNK + 77))


@pytest.fixture
def make_fetch(store: ArtifactStore, host: Host) -> Iterator:
    made: list[ArtifactFetch] = []

    def make(**options: object) -> ArtifactFetch:
        partial = store.open_partial(host.sha, "npz", len(host.data), CHUNK)
        fetch = ArtifactFetch(host.sha, partial, host, **options)  # type: ignore[arg-type]
        made.append(fetch)
        return fetch

    yield make
    for fetch in made:
        fetch.close()


def _serve(fetch: ArtifactFetch, host: Host, lose: set[int] | None = None) -> None:
    """Answer every request as it comes, like a host, dropping the first copy of ``lose``."""
    lose = set(lose or ())
    host.wait_requests(1)
    answered = 0
    while not fetch.partial.complete():
        pending = host.asked()[answered:]
        if not pending:
            host.wait_requests(len(host.requests) + 1)
        for index in pending:
            answered += 1
            if index in lose:
                lose.discard(index)
                continue
            fetch.on_chunk(host.frame(index))


def _stored_on_disk(store: ArtifactStore, sha: str) -> int:
    raw = (store.partial_dir / f"{sha}.have").read_bytes()
    return sum(b.bit_count() for b in raw[HAVE_HEADER.size :])


def test_the_next_requests_go_out_while_most_of_the_window_is_still_arriving(
    make_fetch, host: Host
) -> None:
    fetch = make_fetch(window=16, initial_window=16)
    running = Running(fetch)
    assert host.wait_requests(1) == [list(range(16))]
    for index in range(3):
        fetch.on_chunk(host.frame(index))
    assert len(host.requests) == 1  # three free slots: not worth a request yet
    fetch.on_chunk(host.frame(3))
    # A quarter of the window free: asked for at once, with 12 chunks still on their way.
    assert host.requests[1] == [16, 17, 18, 19]
    for index in range(4, host.total):
        fetch.on_chunk(host.frame(index))
    stats = running.result()
    assert sorted(host.asked()) == list(range(host.total))  # each chunk asked for once
    assert stats.chunks_written == host.total and stats.requests_sent == len(host.requests)


def test_a_late_chunk_alone_is_asked_for_again_and_the_window_halves(
    make_fetch, host: Host
) -> None:
    fetch = make_fetch(window=8, initial_window=8, retry_s=0.3)
    running = Running(fetch)
    _serve(fetch, host, lose={0})  # chunk 0's first copy is lost on the way
    stats = running.result()
    again = host.requests.index([0], 1)
    assert sorted(i for r in host.requests[:again] for i in r) == list(range(host.total))
    assert host.requests[again + 1 :] == []  # exactly the late one was asked for again
    assert fetch.window == 4 and fetch.window_cuts == 1
    assert stats.chunks_written == host.total


def test_a_window_started_small_grows_to_its_bound_while_chunks_keep_coming(
    make_fetch, host: Host
) -> None:
    fetch = make_fetch(window=8, initial_window=2)
    running = Running(fetch)
    _serve(fetch, host)
    running.result()
    assert fetch.window == 8
    assert max(len(r) for r in host.requests) > 2


def test_the_bitmap_on_disk_names_chunks_only_once_a_sync_made_them_durable(
    make_fetch, host: Host, store: ArtifactStore
) -> None:
    fetch = make_fetch(window=40, initial_window=40, sync_bytes=4 * CHUNK, sync_s=60.0)
    running = Running(fetch)
    host.wait_requests(1)
    for index in range(3):
        fetch.on_chunk(host.frame(index))
    time.sleep(0.5)  # the job thread ticks meanwhile; three chunks are below the batch
    assert _stored_on_disk(store, host.sha) == 0
    fetch.on_chunk(host.frame(3))  # the fourth completes a batch
    deadline = time.monotonic() + 10
    while _stored_on_disk(store, host.sha) < 4 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _stored_on_disk(store, host.sha) == 4
    for index in range(4, host.total):
        fetch.on_chunk(host.frame(index))
    running.result()
    assert _stored_on_disk(store, host.sha) == host.total  # and all of them at the end


def test_a_stalled_transfer_records_what_it_has_within_sync_s(
    make_fetch, host: Host, store: ArtifactStore
) -> None:
    fetch = make_fetch(sync_s=0.2, timeout_s=30.0)
    running = Running(fetch)
    host.wait_requests(1)
    for index in range(5):
        fetch.on_chunk(host.frame(index))
    deadline = time.monotonic() + 10
    while _stored_on_disk(store, host.sha) < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _stored_on_disk(store, host.sha) == 5
    for index in range(5, host.total):
        fetch.on_chunk(host.frame(index))
    running.result()


def test_a_fetch_resumed_from_disk_asks_only_for_the_chunks_it_lacks(
    store: ArtifactStore, host: Host
) -> None:
    partial = store.open_partial(host.sha, "npz", len(host.data), CHUNK)
    for index in range(0, host.total, 2):
        offset, length = partial.bounds(index)
        partial.write(index, host.data[offset : offset + length])
    partial.sync()
    partial.close()  # the agent was killed here
    resumed = store.open_partial(host.sha, "npz", len(host.data), CHUNK)
    fetch = ArtifactFetch(host.sha, resumed, host, window=64)
    running = Running(fetch)
    asked = host.wait_requests(1)[0]
    assert asked == list(range(1, host.total, 2))
    for index in asked:
        fetch.on_chunk(host.frame(index))
    running.result()
    assert store.commit(resumed, host.sha, "npz").read_bytes() == host.data


def test_a_reconnect_asks_again_for_every_chunk_still_missing(make_fetch, host: Host) -> None:
    fetch = make_fetch(window=8, initial_window=8)
    running = Running(fetch)
    host.wait_requests(1)
    fetch.on_chunk(host.frame(0))
    fetch.on_reconnect()  # what was in flight may be gone with the connection
    again = host.wait_requests(2)[1]
    assert again == list(range(1, 9))
    for index in range(1, host.total):
        fetch.on_chunk(host.frame(index))
    running.result()
