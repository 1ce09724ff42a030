"""Property-based fuzzing of the agent's message handlers: no input makes one raise, and every
malformed command on the agent's own topic is answered with an error response.

The strategies live in bench/faults.py, whose fuzz run (``python -m bench.faults``) tries more
inputs than these tests do.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bench.faults import ExceptionLog, RecordingClient, _frames, fuzz_agent_once, message_strategy
from device_agent.agent import Agent, AgentConfig
from device_agent.fetch import ArtifactFetch
from device_agent.store import ArtifactStore
from shared.broker_url import parse_broker_url
from shared.errors import EdgeTailorError
from shared.hashing import sha256_bytes
from shared.manifest import decode_manifest
from shared.messages import ChunkRequest, decode
from shared.transfer import decode_chunk

BASE = "etfuzz-agent"
DEVICE = "fuzz-dev"
FUZZ = settings(
    max_examples=250, deadline=None, database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)  # fmt: skip


@pytest.fixture(scope="module")
def fuzzed_agent(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Agent, RecordingClient, ExceptionLog]]:
    data_dir = tmp_path_factory.mktemp("fuzz-agent")
    # No broker is contacted: the handlers are driven directly and the publishes recorded.
    agent = Agent(AgentConfig(parse_broker_url("mqtt://127.0.0.1:1"), DEVICE, data_dir, BASE))
    recorder = RecordingClient()
    agent.client = recorder  # type: ignore[assignment]
    tracebacks = ExceptionLog()
    logging.getLogger("device_agent").addHandler(tracebacks)
    yield agent, recorder, tracebacks
    logging.getLogger("device_agent").removeHandler(tracebacks)


@FUZZ
@given(message_strategy(BASE, [DEVICE, "other-dev"]))
def test_no_message_makes_the_agent_handler_raise_and_bad_commands_get_error_replies(
    fuzzed_agent: tuple[Agent, RecordingClient, ExceptionLog], message: tuple[str, bytes]
) -> None:
    agent, recorder, tracebacks = fuzzed_agent
    fuzz_agent_once(agent, recorder, *message)
    assert tracebacks.records == [], tracebacks.records[0].getMessage()


@FUZZ
@given(st.binary(max_size=2048))
def test_decoders_raise_only_edgetailor_errors_on_arbitrary_bytes(data: bytes) -> None:
    for decoder in (decode, decode_manifest, decode_chunk):
        try:
            decoder(data)
        except EdgeTailorError:
            pass


@pytest.fixture(scope="module")
def artifact() -> bytes:
    return bytes(range(256)) * 20  # 5 chunks of 1 KiB


@FUZZ
@given(st.data())
def test_the_chunk_receiver_keeps_only_chunks_whose_bytes_match_the_artifact(
    tmp_path: Path, artifact: bytes, data: st.DataObject
) -> None:
    from shared.manifest import ArtifactManifest

    sha = sha256_bytes(artifact)
    manifest = ArtifactManifest(
        sha256=sha, size_bytes=len(artifact), format="npz", precision="data"
    )
    store = ArtifactStore(tmp_path / f"s{data.draw(st.integers(0, 10**9))}")
    partial = store.open_partial(sha, "npz", manifest.size_bytes, 1024)
    requests: list[ChunkRequest] = []
    fetch = ArtifactFetch(sha, partial, requests.append)
    frames = _frames(artifact, sha, 1024)
    frame = st.sampled_from(frames)
    damaged = st.tuples(frame, st.integers(min_value=0), st.integers(0, 255)).map(
        lambda t: t[0][: t[1] % len(t[0])] + bytes([t[2]]) + t[0][t[1] % len(t[0]) + 1 :]
    )
    try:
        inputs = st.lists(st.one_of(st.binary(max_size=1200), damaged, frame), max_size=20)
        for payload in data.draw(inputs):
            fetch.on_chunk(payload)
        for index in range(partial.total):
            if partial.has(index):
                offset, length = partial.bounds(index)
                with open(partial.part_path, "rb") as handle:
                    handle.seek(offset)
                    assert handle.read(length) == artifact[offset : offset + length]
    finally:
        partial.discard()
