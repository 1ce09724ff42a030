"""The store's disk budget: least recently used artifacts go first, kept ones never."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from device_agent.errors import JobError
from device_agent.store import ArtifactStore

KIB = 1024


def _artifact(store: ArtifactStore, sha: str, size: int, used_at: float) -> Path:
    path = store.path_of(sha, "tflite")
    path.write_bytes(b"\0" * size)
    os.utime(path, (used_at, used_at))
    return path


def test_make_room_evicts_least_recently_used_first_and_never_what_is_kept(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=100 * KIB)
    old = _artifact(store, "a" * 64, 40 * KIB, 1_000)
    active = _artifact(store, "b" * 64, 40 * KIB, 500)  # older still, but active
    recent = _artifact(store, "c" * 64, 10 * KIB, 2_000)
    store.make_room("d" * 64, "tflite", 45 * KIB, keep={"b" * 64})
    assert not old.exists() and active.exists() and recent.exists()


def test_using_an_artifact_makes_it_recent(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=100 * KIB)
    first = _artifact(store, "a" * 64, 40 * KIB, 1_000)
    second = _artifact(store, "b" * 64, 40 * KIB, 2_000)
    assert store.has("a" * 64, "tflite", 40 * KIB)  # a benchmark reuses it
    store.make_room("c" * 64, "tflite", 45 * KIB, keep=set())
    assert first.exists() and not second.exists()


def test_artifact_that_cannot_fit_even_after_eviction_names_budget_and_use(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=100 * KIB)
    kept = _artifact(store, "a" * 64, 80 * KIB, 1_000)
    with pytest.raises(JobError) as caught:
        store.make_room("c" * 64, "tflite", 45 * KIB, keep={"a" * 64})
    assert caught.value.code == "insufficient_storage"
    assert "does not fit in the store budget: 81,920 of 102,400 bytes" in caught.value.message
    assert kept.exists()
    with pytest.raises(JobError, match="more than the whole store budget of 102,400 bytes"):
        store.make_room("e" * 64, "tflite", 200 * KIB, keep=set())


def test_stale_partial_downloads_are_evicted_before_complete_artifacts(tmp_path: Path) -> None:
    store = ArtifactStore(tmp_path, max_bytes=100 * KIB)
    complete = _artifact(store, "a" * 64, 40 * KIB, 1_000)
    partial = store.open_partial("b" * 64, "tflite", 40 * KIB, 4 * KIB)
    partial.close()
    store.make_room("c" * 64, "tflite", 45 * KIB, keep=set())
    assert complete.exists() and not partial.part_path.exists() and not partial.have_path.exists()
