"""The chunk server's decisions, in-process: what goes out once, what is repeated, and when.

The server publishes through a function it is given; here that function records each frame (and
hands back a delivery the test acknowledges, where the in-flight bound is the subject). The clock
is the test's, so "later than the coalescing window" is a step of the test, not a sleep.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from host.fleet.chunk_server import ChunkServer
from shared.hashing import sha256_file
from shared.messages import ChunkRequest
from shared.transfer import decode_chunk

CHUNK = 1024
TOTAL = 12


class Recorder:
    """The publish function: records the index of every frame handed over."""

    def __init__(self) -> None:
        self.indices: list[int] = []
        self.deliveries: list[Delivery] = []
        self.track = False
        self._cond = threading.Condition()

    def __call__(self, _sha256: str, frame: bytes) -> Delivery | None:
        with self._cond:
            self.indices.append(decode_chunk(frame).index)
            self._cond.notify_all()
            if not self.track:
                return None
            delivery = Delivery()
            self.deliveries.append(delivery)
            return delivery

    def wait_for(self, count: int, timeout: float = 5.0) -> list[int]:
        with self._cond:
            self._cond.wait_for(lambda: len(self.indices) >= count, timeout)
            return list(self.indices)


class Delivery:
    """Stands for paho's MQTTMessageInfo: acknowledged when the test says the broker has it."""

    count = 0

    def __init__(self) -> None:
        Delivery.count += 1
        self.mid = Delivery.count
        self.acknowledged = False

    def is_published(self) -> bool:
        return self.acknowledged


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def artifact(tmp_path: Path) -> tuple[str, Path]:
    path = tmp_path / "blob.npz"
    path.write_bytes(os.urandom(TOTAL * CHUNK - 100))
    return sha256_file(path), path


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


@pytest.fixture
def server(artifact: tuple[str, Path], clock: Clock, recorder: Recorder) -> Iterator[ChunkServer]:
    chunk_server = ChunkServer(recorder, coalesce_s=1.0, clock=clock)
    chunk_server.offer(*artifact)
    yield chunk_server
    chunk_server.close()


def _ask(server: ChunkServer, sha: str, device: str, indices: list[int]) -> list[int]:
    return server.handle(device, ChunkRequest(sha256=sha, chunk_size=CHUNK, indices=indices))


def _settle(
    server: ChunkServer, recorder: Recorder, expected: int, *, blocked: bool = False
) -> list[int]:
    """Every frame the server will hand over now (wakes it, as an acknowledgement would).

    ``blocked``: chunks stay queued (the connection is down or full), so do not wait for them.
    """
    server.wake()
    recorder.wait_for(expected)
    deadline = time.monotonic() + 5
    while not blocked and not server.idle() and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.05)  # a frame beyond the expected ones would show up here
    return list(recorder.indices)


def test_a_chunk_never_published_goes_out_at_once_and_once(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder
) -> None:
    sha, _ = artifact
    assert _ask(server, sha, "dev-a", [0, 1, 1, 2]) == [0, 1, 2]
    assert _settle(server, recorder, 3) == [0, 1, 2]


def test_a_chunk_published_after_a_device_joined_is_not_published_again_for_it(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder
) -> None:
    sha, _ = artifact
    _ask(server, sha, "dev-a", [0])
    _settle(server, recorder, 1)
    _ask(server, sha, "dev-b", [5])  # dev-b is subscribed from here on
    _ask(server, sha, "dev-a", [1])
    _settle(server, recorder, 3)
    assert _ask(server, sha, "dev-b", [1]) == []  # its copy of 1 is on its way
    assert _settle(server, recorder, 3) == [0, 5, 1]
    assert server.chunks_coalesced == 1


def test_late_devices_share_one_repeat_of_what_was_published_before_they_joined(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    _ask(server, sha, "dev-a", [0, 1])
    _settle(server, recorder, 2)
    clock.now += 0.2
    assert _ask(server, sha, "dev-b", [0, 1]) == [0, 1]  # held for the repeat
    clock.now += 0.3
    assert _ask(server, sha, "dev-c", [0, 1]) == []  # rides the same repeat
    assert _settle(server, recorder, 2) == [0, 1]  # nothing repeated within the window
    clock.now += 0.6  # one coalescing window after the first publication
    assert _settle(server, recorder, 4) == [0, 1, 0, 1]
    assert server.chunks_held == 4  # two asks of dev-b held, two of dev-c coalesced into them


def test_a_device_asking_again_for_a_chunk_gets_it_again_at_once(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder
) -> None:
    sha, _ = artifact
    _ask(server, sha, "dev-a", [3])
    _settle(server, recorder, 1)
    assert _ask(server, sha, "dev-a", [3]) == [3]  # it lost the first copy
    assert _settle(server, recorder, 2) == [3, 3]


def test_a_device_that_lost_a_chunk_counts_as_joining_anew(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    _ask(server, sha, "dev-a", [0, 1, 2])
    _settle(server, recorder, 3)
    clock.now += 2.0
    _ask(server, sha, "dev-a", [0])  # lost 0, so it may have lost 1 and 2 with it
    assert _ask(server, sha, "dev-a", [1, 2]) == [1, 2]
    assert _settle(server, recorder, 6) == [0, 1, 2, 0, 1, 2]


def test_devices_sent_a_command_are_waited_for_so_that_each_chunk_leaves_once(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    for device in ("dev-a", "dev-b", "dev-c"):
        server.expect(sha, device)
    _ask(server, sha, "dev-a", [0, 1, 2, 3])
    clock.now += 0.1
    _ask(server, sha, "dev-b", [0, 1, 2, 3])
    assert _settle(server, recorder, 0) == []  # dev-c has not asked yet
    clock.now += 0.1
    _ask(server, sha, "dev-c", [0, 1, 2, 3])
    assert _settle(server, recorder, 4) == [0, 1, 2, 3]
    assert server.expected(sha) == set()


def test_an_expected_device_that_never_asks_delays_the_others_one_window_at_most(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    server.expect(sha, "dev-a")
    server.expect(sha, "dev-offline")
    _ask(server, sha, "dev-a", [0, 1])
    clock.now += 0.5
    assert _settle(server, recorder, 0) == []
    clock.now += 0.6
    assert _settle(server, recorder, 2) == [0, 1]


def test_no_more_chunks_are_handed_over_than_the_in_flight_bound_until_acknowledged(
    artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, path = artifact
    recorder.track = True
    server = ChunkServer(recorder, max_in_flight=3, clock=clock)
    server.offer(sha, path)
    try:
        _ask(server, sha, "dev-a", list(range(10)))
        assert _settle(server, recorder, 3, blocked=True) == [0, 1, 2]
        for delivery in recorder.deliveries[:2]:
            delivery.acknowledged = True
        assert _settle(server, recorder, 5, blocked=True) == [0, 1, 2, 3, 4]
        # paho reports the id before it marks the message published: the id alone frees a slot.
        server.wake(recorder.deliveries[2].mid)
        assert _settle(server, recorder, 6, blocked=True) == [0, 1, 2, 3, 4, 5]
    finally:
        server.close()


def test_nothing_is_handed_over_while_the_connection_is_down(
    artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, path = artifact
    connected = threading.Event()
    server = ChunkServer(recorder, ready=connected.is_set, clock=clock)
    server.offer(sha, path)
    try:
        _ask(server, sha, "dev-a", [0, 1])
        assert _settle(server, recorder, 0, blocked=True) == []
        connected.set()
        assert _settle(server, recorder, 2) == [0, 1]
    finally:
        server.close()


def test_devices_and_streams_nobody_uses_are_forgotten(
    server: ChunkServer,
    artifact: tuple[str, Path],
    recorder: Recorder,
    clock: Clock,
    tmp_path: Path,
) -> None:
    sha, _ = artifact
    server.expect(sha, "dev-never")
    _ask(server, sha, "dev-a", [0])
    clock.now += 1.1  # dev-never was waited for one window
    _settle(server, recorder, 1)
    assert server.streams() == {(sha, CHUNK): 1}
    other = tmp_path / "other.npz"
    other.write_bytes(os.urandom(3000))
    other_sha = server.offer(sha256_file(other), other).sha256
    clock.now += server.session_idle_s + 1
    _ask(server, other_sha, "dev-b", [0])
    assert server.streams() == {(other_sha, CHUNK): 1}
    assert server.expected(sha) == set()


def test_a_withdrawn_artifact_is_refused_and_its_stream_forgotten(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder
) -> None:
    from host.fleet.chunk_server import UnknownArtifactError

    sha, _ = artifact
    _ask(server, sha, "dev-a", [0])
    _settle(server, recorder, 1)
    server.withdraw(sha)
    assert server.streams() == {}
    with pytest.raises(UnknownArtifactError, match="does not offer"):
        _ask(server, sha, "dev-a", [1])


def test_a_device_sent_its_command_after_the_stream_started_is_still_waited_for(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    server.expect(sha, "dev-a")
    _ask(server, sha, "dev-a", [0, 1])  # nobody else expected yet: the stream starts at once
    assert _settle(server, recorder, 2) == [0, 1]
    clock.now += 0.1
    server.expect(sha, "dev-b")  # the rollout's next command
    _ask(server, sha, "dev-a", [2, 3])
    assert _settle(server, recorder, 2) == [0, 1]  # new chunks wait for dev-b
    clock.now += 0.1
    _ask(server, sha, "dev-b", [0, 1, 2, 3])
    # Two commands 0.1 s apart: a third may follow as soon, so the stream waits two such gaps.
    assert _settle(server, recorder, 2) == [0, 1]
    clock.now += 0.15
    assert _settle(server, recorder, 4) == [0, 1, 2, 3]  # once, for both
    clock.now += 1.0
    assert _settle(server, recorder, 6) == [0, 1, 2, 3, 0, 1]  # dev-b's repeat of what it missed


def test_a_rollout_whose_first_boards_ask_before_its_last_command_is_sent_sends_each_chunk_once(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder, clock: Clock
) -> None:
    sha, _ = artifact
    start = clock.now
    server.expect(sha, "dev-a")
    clock.now = start + 0.02
    server.expect(sha, "dev-b")
    clock.now = start + 0.03
    _ask(server, sha, "dev-a", [0, 1, 2, 3])
    clock.now = start + 0.04
    _ask(server, sha, "dev-b", [0, 1, 2, 3])  # everyone sent a command so far has asked...
    assert _settle(server, recorder, 0) == []  # ...but commands are still coming
    clock.now = start + 0.05
    server.expect(sha, "dev-c")
    clock.now = start + 0.08
    _ask(server, sha, "dev-c", [0, 1, 2, 3])
    assert _settle(server, recorder, 0) == []
    clock.now = start + 0.12  # no command for two gaps: the rollout has sent them all
    assert _settle(server, recorder, 4) == [0, 1, 2, 3]
    clock.now = start + 5.0
    assert _settle(server, recorder, 4) == [0, 1, 2, 3]  # and nothing is repeated later


def test_a_single_command_does_not_delay_its_device(
    server: ChunkServer, artifact: tuple[str, Path], recorder: Recorder
) -> None:
    sha, _ = artifact
    server.expect(sha, "dev-a")
    _ask(server, sha, "dev-a", [0, 1])
    assert _settle(server, recorder, 2) == [0, 1]
