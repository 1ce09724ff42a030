from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared import messages
from shared.errors import MessageTooLargeError, UnsupportedVersionError, ValidationError
from shared.manifest import ArtifactManifest
from shared.results import BenchmarkResult, LatencyStats, from_data, to_data

MANIFEST = ArtifactManifest(sha256="ab" * 32, size_bytes=1234, format="tflite", precision="fp32")


def test_a_benchmark_command_round_trips_through_the_envelope() -> None:
    body = messages.BenchmarkCmd(job_id="job-1", model=MANIFEST, runs=10)
    data = messages.encode(body, device_id="pi-01", msg_id="m1")
    msg = messages.decode(data)
    assert msg.schema == "cmd.benchmark"
    assert msg.msg_id == "m1"
    assert msg.device_id == "pi-01"
    assert msg.body == body


def test_malformed_json_is_a_validation_error() -> None:
    with pytest.raises(ValidationError, match="malformed envelope"):
        messages.decode(b"{not json")


def test_an_unknown_envelope_field_is_rejected() -> None:
    raw = json.loads(messages.encode(messages.PingCmd()))
    raw["extra"] = 1
    with pytest.raises(ValidationError, match="extra"):
        messages.decode(json.dumps(raw).encode())


def test_an_unknown_body_field_is_rejected() -> None:
    raw = json.loads(messages.encode(messages.CancelCmd(job_id="j")))
    raw["body"]["surprise"] = True
    with pytest.raises(ValidationError, match="surprise"):
        messages.decode(json.dumps(raw).encode())


def test_an_unknown_major_version_is_refused_with_its_own_error() -> None:
    raw = json.loads(messages.encode(messages.PingCmd()))
    raw["v"] = 2
    with pytest.raises(UnsupportedVersionError, match="version 2"):
        messages.decode(json.dumps(raw).encode())


def test_an_unknown_schema_is_rejected() -> None:
    raw = json.loads(messages.encode(messages.PingCmd()))
    raw["schema"] = "cmd.format_disk"
    with pytest.raises(ValidationError, match="unknown message schema"):
        messages.decode(json.dumps(raw).encode())


def test_an_oversized_message_is_refused_before_parsing() -> None:
    with pytest.raises(MessageTooLargeError):
        messages.decode(b" " * (messages.MAX_MESSAGE_BYTES + 1))


def test_bounded_lists_reject_oversized_content() -> None:
    raw = json.loads(messages.encode(messages.AckCmd(msg_ids=["a"])))
    raw["body"]["msg_ids"] = ["a"] * 2000
    with pytest.raises(ValidationError):
        messages.decode(json.dumps(raw).encode())


def test_message_ids_with_path_characters_are_rejected() -> None:
    raw = json.loads(messages.encode(messages.PingCmd()))
    raw["msg_id"] = "../../etc/passwd"
    with pytest.raises(ValidationError):
        messages.decode(json.dumps(raw).encode())


def test_ids_and_digests_with_a_trailing_newline_are_rejected() -> None:
    # "$" in a pattern also matches before a final newline; ids end up in file names and topics.
    raw = json.loads(messages.encode(messages.BenchmarkCmd(job_id="j1", model=MANIFEST)))
    raw["msg_id"] = "abc\n"
    with pytest.raises(ValidationError):
        messages.decode(json.dumps(raw).encode())
    raw = json.loads(messages.encode(messages.BenchmarkCmd(job_id="j1", model=MANIFEST)))
    raw["body"]["model"]["sha256"] = "ab" * 32 + "\n"
    with pytest.raises(ValidationError):
        messages.decode(json.dumps(raw).encode())


def test_peek_ids_reads_what_it_can_from_an_invalid_message() -> None:
    assert messages.peek_ids(b'{"schema": "cmd.x", "msg_id": "abc", "v": 9}') == ("cmd.x", "abc")
    assert messages.peek_ids(b'{"msg_id": "../x"}') == (None, None)
    assert messages.peek_ids(b"[1, 2]") == (None, None)
    assert messages.peek_ids(b"\xff\xfe") == (None, None)


def test_a_benchmark_result_converts_to_and_from_response_data() -> None:
    stats = LatencyStats(mean=1, std=0.1, min=0.9, p50=1, p90=1.1, p95=1.2, p99=1.3, max=1.5)
    result = BenchmarkResult(
        job_id="j",
        model_sha256="ab" * 32,
        backend="tflite",
        runtime="ai_edge_litert 2.3.0",
        threads=1,
        size_bytes=10,
        load_ms=2.0,
        warmup_runs=1,
        runs=50,
        latency_ms=stats,
        peak_rss_mb=30.0,
        rss_growth_mb=1.0,
    )
    response = messages.Response(status="ok", data=to_data(result))
    decoded = messages.decode(messages.encode(response, corr_id="c1"))
    assert from_data(decoded.body.data, BenchmarkResult) == result
    with pytest.raises(ValidationError):
        from_data({"job_id": "j"}, BenchmarkResult)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2048))
def test_decode_never_raises_anything_but_validation_errors_on_random_bytes(data: bytes) -> None:
    try:
        messages.decode(data)
    except ValidationError:
        pass


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(
    schema=st.sampled_from(list(messages.SCHEMAS) + ["cmd.nope", ""]),
    v=st.sampled_from([1, 1, 2, 0, "1"]),
    body=st.dictionaries(st.text(max_size=12), json_values, max_size=6),
)
def test_decode_handles_structurally_plausible_envelopes_without_crashing(
    schema: str, v: object, body: dict
) -> None:
    data = msgspec.json.encode({"schema": schema, "v": v, "msg_id": "m", "ts": 0.0, "body": body})
    try:
        messages.decode(data)
    except ValidationError:
        pass


def test_deploy_command_carries_runtime_and_threads_and_omits_an_unset_runtime_for_older_agents() -> (
    None
):
    picked = messages.DeployCmd(deploy_id="d1", model=MANIFEST, runtime="onnx", threads=2)
    body = json.loads(messages.encode(picked))["body"]
    assert body["runtime"] == "onnx" and body["threads"] == 2
    assert messages.decode(messages.encode(picked)).body == picked
    plain = json.loads(messages.encode(messages.DeployCmd(deploy_id="d2", model=MANIFEST)))["body"]
    assert "runtime" not in plain  # an agent that predates the field still decodes the command
