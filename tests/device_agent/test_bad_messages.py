"""Malformed, unsupported and oversized commands get an error response; the agent keeps serving."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from shared.messages import MAX_MESSAGE_BYTES, PingCmd, encode
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost


def _ping_envelope(msg_id: str, **changes: object) -> dict:
    envelope = json.loads(encode(PingCmd(), msg_id=msg_id))
    envelope.update(changes)
    return envelope


CASES = {
    "malformed_json": (b'{"schema": "cmd.ping", "msg_id": "m-json", ', "bad_message", None),
    "unsupported_version": (
        json.dumps(_ping_envelope("m-v2", v=2)).encode(),
        "unsupported_version",
        "m-v2",
    ),
    "unknown_field": (
        json.dumps(_ping_envelope("m-field", surprise=1)).encode(),
        "bad_message",
        "m-field",
    ),
    "unknown_body_field": (
        json.dumps(_ping_envelope("m-body", body={"extra": True})).encode(),
        "bad_message",
        "m-body",
    ),
    "unknown_schema": (
        json.dumps(_ping_envelope("m-schema", schema="cmd.explode")).encode(),
        "bad_message",
        "m-schema",
    ),
    "schema_not_matching_topic": (
        json.dumps(_ping_envelope("m-topic", schema="cmd.ack", body={"msg_ids": []})).encode(),
        "bad_message",
        "m-topic",
    ),
    "oversized": (
        json.dumps(_ping_envelope("m-big", pad="x" * (MAX_MESSAGE_BYTES + 10))).encode(),
        "too_large",
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_command_gets_an_error_response_and_the_agent_still_answers_ping(
    case: str, start_agent: Callable[..., AgentProcess], minihost: MiniHost, device_id: str
) -> None:
    payload, code, corr_id = CASES[case]
    agent = start_agent()
    minihost.send_raw(device_id, "ping", payload)
    received = minihost.wait_for(lambda: minihost.errors_on("error"), 10, "error response")[0]
    response = received.message.body
    assert response.status == "error" and response.error is not None
    assert response.error.code == code
    assert received.message.corr_id == corr_id

    ping_id = minihost.send(device_id, "ping", PingCmd())
    assert minihost.wait_final(ping_id, 10).status == "ok"
    assert agent.running
