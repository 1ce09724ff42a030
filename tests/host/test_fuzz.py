"""Property-based fuzzing of the host's message handler: a connected Fleet survives any topic and
payload a device (or an attacker on the broker) could publish, without a handler's catch-all firing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

from bench.faults import ExceptionLog, deliver, message_strategy
from host.fleet import Fleet

DEVICES = ["fuzz-dev", "other-dev"]


@pytest.fixture(scope="module")
def fuzz_base() -> str:
    import uuid

    return f"etfuzz-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
def fuzzed_fleet(
    shared_broker_url: str, fuzz_base: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Fleet, ExceptionLog]]:
    db: Path = tmp_path_factory.mktemp("fuzz-host") / "host.db"
    tracebacks = ExceptionLog()
    logging.getLogger("host").addHandler(tracebacks)
    with Fleet(shared_broker_url, fuzz_base, store=f"sqlite:///{db}") as fleet:
        yield fleet, tracebacks
    logging.getLogger("host").removeHandler(tracebacks)


def _strategy():
    return message_strategy("etfuzz-host", DEVICES)


@settings(max_examples=250, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])  # fmt: skip
@given(_strategy())
def test_no_message_makes_the_fleet_handler_raise(
    fuzzed_fleet: tuple[Fleet, ExceptionLog], message: tuple[str, bytes]
) -> None:
    fleet, tracebacks = fuzzed_fleet
    topic, payload = message
    # The strategy builds topics under its own base; move them under the fleet's.
    topic = topic.replace("etfuzz-host/", f"{fleet.topics.base}/", 1)
    deliver(fleet._on_message, None, topic, payload)
    assert fleet.connected
    assert tracebacks.records == [], tracebacks.records[0].getMessage()
