"""Fixtures shared by every test package: real Mosquitto brokers and unique base topics."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.brokers import MosquittoProcess, free_port, wait_for_port

SHARED_BROKER = ("127.0.0.1", 1883)


@pytest.fixture
def base_topic() -> str:
    """A base topic no other test (or earlier run) uses: retained messages outlive a run."""
    return f"ettest-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def shared_broker_url() -> str:
    """The machine's Mosquitto on 127.0.0.1:1883 (started by the machine and by .ci/run)."""
    host, port = SHARED_BROKER
    try:
        with socket.create_connection((host, port), timeout=2):
            pass
    except OSError:
        pytest.fail(f"no MQTT broker on {host}:{port}: start one with `mosquitto -d`")
    return f"mqtt://{host}:{port}"


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[MosquittoProcess]:
    """A Mosquitto of the test's own on a free port, which the test may kill and restart."""
    broker = MosquittoProcess(tmp_path / "mosquitto", port=free_port())
    broker.start()
    yield broker
    broker.stop()


__all__ = ["MosquittoProcess", "free_port", "os", "wait_for_port"]
