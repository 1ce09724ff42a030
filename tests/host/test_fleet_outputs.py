"""The host keeps each outputs part on disk, joins a job's parts once all are in, and rejects a
file whose parts do not match the result's sha256."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import msgspec
import pytest

from host.fleet.outputs import OutputsCollector
from shared.errors import IntegrityError
from shared.messages import OUTPUTS_PART_BYTES
from shared.results import split_outputs


def test_parts_arriving_out_of_order_and_twice_are_joined_once_all_are_in(tmp_path: Path) -> None:
    collector = OutputsCollector(tmp_path / "outputs")
    data = os.urandom(2 * OUTPUTS_PART_BYTES + 7)
    ref, parts = split_outputs("job-7", data)
    collector.add(parts[2])
    collector.add(parts[0])
    assert collector.wait("job-7", ref, timeout=0.1) is None  # part 1 still missing
    late = threading.Timer(0.2, collector.add, args=(parts[1],))
    late.start()
    path = collector.wait("job-7", ref, timeout=10)
    late.join()
    assert path is not None and path.read_bytes() == data
    collector.add(parts[1])  # re-sent after the join: nothing changes
    assert collector.wait("job-7", ref, timeout=0) == path
    assert sorted(p.name for p in (tmp_path / "outputs").iterdir()) == ["job-7.npz"]


def test_parts_that_do_not_match_the_results_sha256_are_refused(tmp_path: Path) -> None:
    collector = OutputsCollector(tmp_path / "outputs")
    ref, parts = split_outputs("job-8", os.urandom(OUTPUTS_PART_BYTES + 1))
    collector.add(parts[0])
    collector.add(msgspec.structs.replace(parts[1], data=parts[0].data))
    with pytest.raises(IntegrityError):
        collector.wait("job-8", ref, timeout=1)
    assert not collector.path("job-8").exists()
