"""The agent's outbox is bounded: entries past the time to live, and the oldest past the entry and
byte caps, are dropped with a log line; the entry just written always stays."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from device_agent.outbox import Outbox


def _put(outbox: Outbox, msg_id: str, size: int = 10) -> None:
    outbox.put(msg_id, "t/resp/benchmark", b"x" * size, corr_id=f"c-{msg_id}", job_id=f"j-{msg_id}")


def test_entries_past_the_time_to_live_are_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = Outbox(tmp_path / "outbox", ttl_s=60.0)
    _put(outbox, "old")
    _put(outbox, "young")
    old = outbox.get("old")
    assert old is not None
    with caplog.at_level(logging.WARNING, logger="device_agent.outbox"):
        dropped = outbox.prune(now=old.created + 61.0)
    assert [e.msg_id for e in dropped] == ["old", "young"]
    assert outbox.entries() == []
    assert "dropped unacknowledged response old (job j-old, command c-old)" in caplog.text


def test_the_oldest_entries_past_the_entry_cap_are_dropped_when_a_new_one_comes(
    tmp_path: Path,
) -> None:
    outbox = Outbox(tmp_path / "outbox", max_entries=3)
    for index in range(5):
        _put(outbox, f"m{index}")
    assert [e.msg_id for e in outbox.entries()] == ["m2", "m3", "m4"]


def test_the_byte_cap_drops_the_oldest_but_never_the_entry_just_written(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "outbox", max_bytes=250)
    _put(outbox, "a", 100)
    _put(outbox, "b", 100)
    _put(outbox, "c", 100)  # 300 bytes: the oldest goes
    assert [e.msg_id for e in outbox.entries()] == ["b", "c"]
    _put(outbox, "huge", 1000)  # alone above the cap: kept, everything older goes
    assert [e.msg_id for e in outbox.entries()] == ["huge"]
