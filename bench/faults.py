"""Fault run: tampering, broker kills, agent kills and fuzzing, with the count of each outcome.

    python -m bench.faults [--flips 1000] [--transfers 20] [--kills 20] [--fuzz-examples N]
                           [--out bench/results/faults.json] [--skip tamper,broker,agent,fuzz]

Every loop lives here once; the tests in tests/device_agent/test_tamper.py, test_fuzz.py and
tests/e2e/test_faults.py run the same loops with small counts and assert on the counts this module
returns. What each loop proves:

- tamper: single-bit flips of an artifact (whole-file sha256 in the store), of chunk frames (the
  receiver's framing and manifest checks) and of a signed manifest (decoding or the Ed25519
  signature) are all refused before any runtime sees the bytes, and the store keeps exactly the
  artifacts it had. A flip of a manifest that decodes to the very same manifest (a float's 17th
  digit) changes nothing that the signature covers; those are counted apart as ``unchanged``.
- broker: Mosquitto is SIGKILLed at a random point of each of N transfers of a multi-MB model and
  restarted; every job ends (result or a clear error code) within its timeout and nothing in the
  agent's store ever has a content hash other than its name.
- agent: the agent is SIGKILLed at random points of download, verification/benchmark and report
  (the last through the agent's after-persist test hook) and restarted; every job's result reaches
  the host exactly once and the store holds only valid artifacts.
- fuzz: hypothesis drives the agent's and the host's message handlers with generated topics and
  payloads; the count of inputs tried is printed.

The e2e loops start real processes (Mosquitto, ``edgetailor-agent``) through the helpers in
``tests/``; the machine needs ``mosquitto`` on the PATH.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from device_agent.errors import JobError
from device_agent.fetch import ArtifactFetch
from device_agent.store import ArtifactStore
from shared.errors import SignatureError, ValidationError
from shared.hashing import sha256_bytes, sha256_file
from shared.manifest import ArtifactManifest, decode_manifest, encode_manifest
from shared.messages import ChunkRequest
from shared.signing import verify_manifest
from shared.transfer import chunk_bounds, chunk_count, encode_chunk

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/faults.json")


def flip_bit(data: bytes, bit: int) -> bytes:
    flipped = bytearray(data)
    flipped[bit >> 3] ^= 1 << (bit & 7)
    return bytes(flipped)


def store_snapshot(store_dir: Path) -> dict[str, str]:
    """name -> sha256 of every file in a store directory."""
    return {p.name: sha256_file(p) for p in sorted(store_dir.iterdir()) if p.is_file()}


def invalid_store_entries(store_dir: Path) -> list[str]:
    """Store files whose content hash is not the one their name claims (must always be empty)."""
    if not store_dir.is_dir():
        return []
    return [
        p.name
        for p in sorted(store_dir.iterdir())
        if p.is_file() and sha256_file(p) != p.name.split(".", 1)[0]
    ]


# -- tampering, in-process ---------------------------------------------------------------------
@dataclass
class FlipCounts:
    tried: int = 0
    rejected: int = 0
    unchanged: int = 0  # the flip decoded to the identical, still validly signed manifest
    accepted: int = 0  # a changed input that passed: must stay 0
    store_changed: int = 0  # iterations after which the store differed: must stay 0
    reasons: dict[str, int] = field(default_factory=dict)

    def reject(self, reason: str) -> None:
        self.rejected += 1
        self.reasons[reason] = self.reasons.get(reason, 0) + 1


def _receive_file(store: ArtifactStore, data: bytes, manifest: ArtifactManifest, chunk_size: int) -> Path:
    """Receive ``data`` into the store under ``manifest`` as the agent does, chunk by chunk."""
    partial = store.open_partial(manifest.sha256, manifest.format, manifest.size_bytes, chunk_size)
    try:
        for index in range(partial.total):
            offset, length = partial.bounds(index)
            partial.write(index, data[offset : offset + length])
    except BaseException:
        partial.discard()
        raise
    return store.commit(partial, manifest.sha256, manifest.format)


def artifact_flips(
    store: ArtifactStore, data: bytes, manifest: ArtifactManifest, flips: int, rng: random.Random
) -> FlipCounts:
    """Each flip: the received file differs from its manifest in one bit; commit must refuse it."""
    counts = FlipCounts()
    before = store_snapshot(store.store_dir)
    chunk_size = max(1024, min(1024 * 1024, len(data)))
    for _ in range(flips):
        counts.tried += 1
        tampered = flip_bit(data, rng.randrange(len(data) * 8))
        try:
            _receive_file(store, tampered, manifest, chunk_size)
        except JobError as exc:
            counts.reject(exc.code)
        else:
            counts.accepted += 1
        if store_snapshot(store.store_dir) != before or any(store.partial_dir.iterdir()):
            counts.store_changed += 1
    return counts


def _frames(data: bytes, sha256: str, chunk_size: int) -> list[bytes]:
    total = chunk_count(len(data), chunk_size)
    frames = []
    for index in range(total):
        offset, length = chunk_bounds(len(data), chunk_size, index)
        frames.append(encode_chunk(sha256, index, total, offset, data[offset : offset + length]))
    return frames


def _fetch_for(store: ArtifactStore, manifest: ArtifactManifest, chunk_size: int) -> ArtifactFetch:
    partial = store.open_partial(manifest.sha256, manifest.format, manifest.size_bytes, chunk_size)

    def no_request(_request: ChunkRequest) -> None:
        return None

    return ArtifactFetch(manifest.sha256, partial, no_request)


def chunk_flips(
    store: ArtifactStore,
    data: bytes,
    manifest: ArtifactManifest,
    flips: int,
    rng: random.Random,
    chunk_size: int = 1024,
) -> FlipCounts:
    """Each flip hits one bit of one chunk frame (header or payload); the receiver must drop it."""
    counts = FlipCounts()
    frames = _frames(data, manifest.sha256, chunk_size)
    fetch = _fetch_for(store, manifest, chunk_size)
    try:
        for _ in range(flips):
            counts.tried += 1
            index = rng.randrange(len(frames))
            frame = frames[index]
            rejected_before = fetch.rejected
            fetch.on_chunk(flip_bit(frame, rng.randrange(len(frame) * 8)))
            if fetch.rejected == rejected_before + 1 and fetch.partial.stored_count() == 0:
                counts.reject("bad_chunk")
            else:
                counts.accepted += 1
    finally:
        fetch.partial.discard()
    return counts


def manifest_flips(
    signed: ArtifactManifest,
    trusted: Any,
    device_id: str,
    flips: int,
    rng: random.Random,
    *,
    min_sequence: int = 0,
) -> FlipCounts:
    """Each flip hits one bit of the signed manifest as sent (JSON); decode or verify must fail."""
    counts = FlipCounts()
    raw = encode_manifest(signed)
    for _ in range(flips):
        counts.tried += 1
        try:
            decoded = decode_manifest(flip_bit(raw, rng.randrange(len(raw) * 8)))
        except ValidationError:
            counts.reject("decode")
            continue
        try:
            verify_manifest(decoded, trusted, device_id=device_id, min_sequence=min_sequence)
        except SignatureError:
            counts.reject("signature")
            continue
        if decoded == signed:
            counts.unchanged += 1
        else:
            counts.accepted += 1
    return counts


def policy_cases(
    store: ArtifactStore,
    data: bytes,
    good: ArtifactManifest,
    key: Any,
    other_key: Any,
    device_id: str,
    current_sequence: int,
) -> dict[str, str]:
    """The named attacks of the issue; each maps to the error that refused it ("" if accepted)."""
    from shared.signing import sign_manifest

    def signed(**changes: Any) -> ArtifactManifest:
        return sign_manifest(msgspec.structs.replace(good, **changes), key)

    manifests = {
        "unsigned": msgspec.structs.replace(good, signature=None, key_id=None),
        "wrong_key": sign_manifest(good, other_key),
        "replayed_older": signed(sequence=current_sequence - 1),
        "expired": signed(expires=time.time() - 60),
        "other_device": signed(target_device=f"{device_id}-other"),
    }
    outcomes: dict[str, str] = {}
    for case, manifest in manifests.items():
        try:
            verify_manifest(manifest, key.public_key(), device_id=device_id, min_sequence=current_sequence)
            outcomes[case] = ""
        except SignatureError as exc:
            outcomes[case] = f"SignatureError: {exc}"
    chunk_size = 1024
    for case, served in (("truncated", data[: len(data) - 100]), ("oversized", data + bytes(3000))):
        fetch = _fetch_for(store, good, chunk_size)
        try:
            for frame in _frames(served, good.sha256, chunk_size):
                fetch.on_chunk(frame)
            complete = fetch.partial.complete()
        finally:
            fetch.partial.discard()
        outcomes[case] = "" if complete else f"{fetch.rejected} chunks rejected, transfer incomplete"
    too_big = encode_manifest(good).replace(
        f'"size_bytes":{good.size_bytes}'.encode(), b'"size_bytes":3000000000'
    )
    try:
        decode_manifest(too_big)
        outcomes["oversized_manifest"] = ""
    except ValidationError as exc:
        outcomes["oversized_manifest"] = f"ValidationError: {exc}"
    return outcomes


def run_tamper(data: bytes, flips: int, seed: int = 0) -> dict[str, Any]:
    """The in-process tamper loops on ``data`` (an artifact's bytes); returns their counts."""
    from shared.signing import generate_key, sign_manifest

    rng = random.Random(seed)
    key, other_key = generate_key(), generate_key()
    device_id = "bench-dev"
    manifest = ArtifactManifest(
        sha256=sha256_bytes(data), size_bytes=len(data), format="tflite", precision="fp32",
        name="model.tflite", created=time.time(), target_device=device_id, sequence=5,
        expires=time.time() + 3600,
    )  # fmt: skip
    signed = sign_manifest(manifest, key)
    with tempfile.TemporaryDirectory(prefix="et-tamper-") as tmp:
        store = ArtifactStore(Path(tmp))
        active = _receive_file(store, data, signed, 1024 * 1024)
        active_sha = sha256_file(active)
        # The artifact flips need a store without the good copy (commit would see it already there).
        flip_store = ArtifactStore(Path(tmp) / "flips")
        results = {
            "artifact_flips": asdict(artifact_flips(flip_store, data, signed, flips, rng)),
            "chunk_flips": asdict(chunk_flips(flip_store, data, signed, flips, rng)),
            "manifest_flips": asdict(
                manifest_flips(signed, key.public_key(), device_id, flips, rng, min_sequence=5)
            ),
            "policy": policy_cases(flip_store, data, signed, key, other_key, device_id, 5),
        }
        results["active_unchanged"] = sha256_file(active) == active_sha == signed.sha256
        results["flip_store_files"] = sorted(p.name for p in flip_store.store_dir.iterdir())
    return results
