from __future__ import annotations

import pytest

from shared.errors import ConfigError, ValidationError
from shared.topics import ParsedTopic, Topics

SHA = "0f" * 32


def test_topics_carry_the_protocol_version_and_round_trip_through_parse() -> None:
    t = Topics("fleet")
    assert t.status("pi-1") == "fleet/v1/dev/pi-1/status"
    assert t.parse(t.cmd("pi-1", "benchmark")) == ParsedTopic("cmd", "pi-1", "benchmark")
    assert t.parse(t.resp("pi-1", "deploy")) == ParsedTopic("resp", "pi-1", "deploy")
    assert t.parse(t.xfer_request("pi-1")) == ParsedTopic("xfer_req", "pi-1")
    assert t.parse(t.artifact_chunks(SHA)) == ParsedTopic("art", sha256=SHA)
    assert t.parse(t.host_status()) == ParsedTopic("host_status")


@pytest.mark.parametrize("device_id", ["", "a/b", "+", "#", "../x", "x" * 65, ".hidden", "pi-1\n"])
def test_device_ids_that_could_escape_a_topic_or_a_path_are_refused(device_id: str) -> None:
    with pytest.raises(ConfigError):
        Topics().status(device_id)


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/dev/a/status",
        "edgetailor/v2/dev/a/status",
        "edgetailor/v1/dev/a/cmd/Bad",
        "edgetailor/v1/dev/a/cmd",
        "edgetailor/v1/art/xyz",
        "edgetailor/v1/dev/a/status/extra",
        f"edgetailor/v1/art/{SHA}\n",
        "edgetailor/v1/dev/a\n/status",
    ],
)
def test_topics_outside_the_contract_are_rejected(topic: str) -> None:
    with pytest.raises(ValidationError):
        Topics().parse(topic)


def test_a_base_topic_with_wildcards_is_refused() -> None:
    with pytest.raises(ConfigError):
        Topics("a/+")


def test_a_share_group_makes_responses_and_chunk_requests_shared_subscriptions() -> None:

    plain = Topics("b").host_subscriptions()
    shared = Topics("b").host_subscriptions(share_group="hosts")
    assert "$share/hosts/b/v1/dev/+/resp/+" in shared
    assert "$share/hosts/b/v1/dev/+/xfer/req" in shared
    assert "b/v1/dev/+/status" in shared and "b/v1/dev/+/birth" in shared
    assert not any(t.startswith("$share") for t in plain)


def test_a_share_group_with_a_slash_or_wildcard_is_refused() -> None:
    from shared.topics import check_share_group

    for bad in ("a/b", "a+", "#", ""):
        with pytest.raises(ConfigError):
            check_share_group(bad)
