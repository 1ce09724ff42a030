"""Raw eval outputs travel back in bounded, validated parts and are joined only when they match."""

from __future__ import annotations

import os

import msgspec
import pytest

from shared.errors import IntegrityError, ValidationError
from shared.messages import OUTPUTS_PART_BYTES, OutputsPart, decode, encode
from shared.results import join_outputs, split_outputs


def test_outputs_split_into_parts_that_fit_a_message_and_join_back_in_any_order() -> None:
    data = os.urandom(3 * OUTPUTS_PART_BYTES + 123)
    ref, parts = split_outputs("job-1", data)
    assert ref.parts == len(parts) == 4 and ref.size_bytes == len(data)
    for part in parts:
        payload = encode(part, device_id="pi-01")
        assert len(payload) < 128_000  # AWS IoT Core's payload cap
        assert decode(payload).body == part
    shuffled = [parts[2], parts[0], parts[3], parts[1], parts[0]]  # a re-sent duplicate too
    assert join_outputs(ref, shuffled) == data


def test_missing_or_foreign_or_altered_parts_are_refused() -> None:
    ref, parts = split_outputs("job-1", os.urandom(2 * OUTPUTS_PART_BYTES))
    with pytest.raises(IntegrityError, match=r"parts \[1\] of 2 are missing"):
        join_outputs(ref, parts[:1])
    _other_ref, other = split_outputs("job-1", os.urandom(100))
    with pytest.raises(IntegrityError, match="belongs to another file"):
        join_outputs(ref, [parts[0], other[0]])
    forged = msgspec.structs.replace(parts[1], data=parts[0].data)
    with pytest.raises(IntegrityError, match="do not match their sha256"):
        join_outputs(ref, [parts[0], forged])


def test_outputs_past_the_limit_are_refused_before_any_part_is_made() -> None:
    with pytest.raises(ValidationError, match="over the 8 MiB"):
        split_outputs("job-1", b"\0" * (8 * 1024 * 1024 + 1))


def test_an_oversized_part_does_not_decode() -> None:
    _ref, (part,) = split_outputs("job-1", b"abc")
    big = msgspec.structs.replace(part, data="A" * (OUTPUTS_PART_BYTES * 2))
    with pytest.raises(ValidationError):
        decode(encode(big))
    assert isinstance(decode(encode(part)).body, OutputsPart)
