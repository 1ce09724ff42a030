"""The artifact manifest: what a file is, how to feed it, where it came from, and who vouches for it.

Artifacts are content-addressed by ``sha256``. The manifest is signed by the host (Ed25519 over
:func:`signing_bytes`); the device checks hash and signature before any runtime parses the file.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec

from shared.errors import ValidationError

Sha256 = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}\Z")]
ShortStr = Annotated[str, msgspec.Meta(max_length=128)]
# 2 GiB: larger than any model a board of this class can run; bounds what a device will allocate.
MAX_ARTIFACT_BYTES = 2 * 1024**3

ArtifactFormat = Literal["tflite", "onnx", "npz"]
Precision = Literal["fp32", "fp16", "int8_dynamic", "int8", "qat_int8", "mixed", "data"]
DType = Literal["float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"]


class QuantParams(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Affine quantization of a tensor: real = scale * (q - zero_point)."""

    scale: Annotated[list[float], msgspec.Meta(max_length=4096)]
    zero_point: Annotated[list[int], msgspec.Meta(max_length=4096)]
    axis: int = 0


class TensorSpec(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    name: ShortStr
    shape: Annotated[list[int], msgspec.Meta(max_length=8)]
    dtype: DType
    quant: QuantParams | None = None


class ArtifactManifest(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    sha256: Sha256
    size_bytes: Annotated[int, msgspec.Meta(ge=1, le=MAX_ARTIFACT_BYTES)]
    format: ArtifactFormat
    precision: Precision
    name: ShortStr = ""
    inputs: Annotated[list[TensorSpec], msgspec.Meta(max_length=16)] = []
    outputs: Annotated[list[TensorSpec], msgspec.Meta(max_length=16)] = []
    recipe: Annotated[list[dict[str, Any]], msgspec.Meta(max_length=32)] = []
    metrics: dict[ShortStr, float | int | str | None] = {}
    created: float = 0.0
    # Trust fields (see shared.signing): who the manifest is for, its order, its lifetime.
    target_device: ShortStr | None = None
    sequence: int = 0
    expires: float | None = None
    key_id: ShortStr | None = None
    signature: Annotated[str, msgspec.Meta(max_length=256)] | None = None


def signing_bytes(manifest: ArtifactManifest) -> bytes:
    """Canonical bytes covered by the signature: every field but ``signature``, keys sorted."""
    fields = msgspec.to_builtins(manifest)
    fields.pop("signature", None)
    return msgspec.json.encode(fields, order="sorted")


def encode_manifest(manifest: ArtifactManifest) -> bytes:
    return msgspec.json.encode(manifest)


def decode_manifest(data: bytes) -> ArtifactManifest:
    try:
        return msgspec.json.decode(data, type=ArtifactManifest)
    # msgspec raises UnicodeDecodeError, not DecodeError, for invalid UTF-8 inside a string.
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:
        raise ValidationError(f"invalid artifact manifest: {exc}") from exc
