"""Host-side artifacts: a content-addressed directory and manifests built from the files themselves.

``manifest_for_file`` inspects a ``.tflite`` (LiteRT interpreter), an ``.onnx`` (onnxruntime session)
or an eval ``.npz`` and returns a :class:`shared.manifest.ArtifactManifest` whose tensor specs come
from the file, not from what the caller believes it exported; with a signing key it is signed
(shared.signing) so that agents provisioned with the matching trust key accept it.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from host.errors import ConfigError, HostError
from shared.errors import ValidationError
from shared.hashing import is_sha256_hex, sha256_file
from shared.manifest import MAX_ARTIFACT_BYTES, ArtifactManifest, QuantParams, TensorSpec
from shared.signing import load_private_key, sign_manifest

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

logger = logging.getLogger(__name__)

FORMAT_BY_SUFFIX = {".tflite": "tflite", ".onnx": "onnx", ".npz": "npz"}
_DTYPES = {"float32", "float16", "int8", "uint8", "int16", "int32", "int64", "bool"}
_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


class ArtifactError(HostError):
    """An artifact file cannot be read, inspected or stored."""


def resolve_signing_key(
    key: Ed25519PrivateKey | str | os.PathLike[str] | None,
) -> Ed25519PrivateKey | None:
    """A loaded key, or the key read from a PEM path, or None."""
    if key is None or not isinstance(key, (str, os.PathLike)):
        return key
    return load_private_key(key)


def format_of(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise ConfigError(
            f"{path}: unsupported artifact type {suffix or '(none)'!r}; use .tflite, .onnx or .npz"
        )
    return FORMAT_BY_SUFFIX[suffix]


def _dtype_name(dtype: Any) -> str:
    import numpy as np

    name = np.dtype(dtype).name
    if name not in _DTYPES:
        raise ArtifactError(f"tensor dtype {name} is not supported by the wire contract")
    return name


def _tflite_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        raise ArtifactError(f"{path} is not a valid TFLite model: {exc}") from exc

    def spec(detail: dict[str, Any]) -> TensorSpec:
        qp = detail.get("quantization_parameters") or {}
        scales = [float(s) for s in qp.get("scales", [])]
        quant = None
        if scales:
            quant = QuantParams(
                scale=scales,
                zero_point=[int(z) for z in qp.get("zero_points", [])],
                axis=int(qp.get("quantized_dimension", 0)),
            )
        return TensorSpec(
            name=str(detail["name"])[:128],
            shape=[int(d) for d in detail["shape"]],
            dtype=_dtype_name(detail["dtype"]),
            quant=quant,
        )

    return (
        [spec(d) for d in interpreter.get_input_details()],
        [spec(d) for d in interpreter.get_output_details()],
    )


def _onnx_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        raise ArtifactError(f"{path} is not a valid ONNX model: {exc}") from exc

    def spec(arg: Any) -> TensorSpec:
        if arg.type not in _ONNX_DTYPES:
            raise ArtifactError(f"{path}: tensor {arg.name} has unsupported type {arg.type}")
        # Symbolic (batch) dimensions are announced as -1, as TFLite's shape_signature does.
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        return TensorSpec(name=str(arg.name)[:128], shape=shape, dtype=_ONNX_DTYPES[arg.type])

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def _npz_specs(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import numpy as np

    try:
        # allow_pickle=False: an eval file is data, never code.
        with np.load(path, allow_pickle=False) as data:
            arrays = {name: (list(data[name].shape), data[name].dtype) for name in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ArtifactError(f"{path} is not a readable .npz of plain arrays: {exc}") from exc
    inputs = sorted(n for n in arrays if n == "x" or (n.startswith("x") and n[1:].isdigit()))
    if not inputs:
        raise ArtifactError(
            f"{path}: an eval .npz needs an array 'x' (or x0..xN); has {sorted(arrays)}"
        )
    outputs = [n for n in ("y", "ref") if n in arrays]
    make = lambda n: TensorSpec(name=n, shape=arrays[n][0], dtype=_dtype_name(arrays[n][1]))
    return [make(n) for n in inputs], [make(n) for n in outputs]


def _guess_precision(fmt: str, inputs: list[TensorSpec], outputs: list[TensorSpec]) -> str:
    if fmt == "npz":
        return "data"
    if any(t.dtype in ("int8", "uint8") and t.quant is not None for t in inputs + outputs):
        return "int8"
    if any(t.dtype == "float16" for t in inputs + outputs):
        return "fp16"
    return "fp32"


def manifest_for_file(
    path: str | Path,
    *,
    name: str | None = None,
    precision: str | None = None,
    recipe: list[dict[str, Any]] | None = None,
    metrics: dict[str, float | int | str | None] | None = None,
    signing_key: Ed25519PrivateKey | str | os.PathLike[str] | None = None,
    target_device: str | None = None,
    sequence: int = 0,
    expires: float | None = None,
) -> ArtifactManifest:
    """Build (and sign, when given a key) the manifest of a .tflite, .onnx or eval .npz file.

    ``precision`` defaults to what the tensors show (int8 when inputs/outputs are quantized, else
    fp32; "data" for .npz); pass it explicitly for dynamic-range or weight-only quantized models,
    whose inputs and outputs stay float.
    """
    path = Path(path)
    fmt = format_of(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {path}: {exc}") from exc
    if not 0 < size <= MAX_ARTIFACT_BYTES:
        raise ArtifactError(
            f"{path} has {size} bytes; an artifact must have 1..{MAX_ARTIFACT_BYTES}"
        )
    inspect = {"tflite": _tflite_specs, "onnx": _onnx_specs, "npz": _npz_specs}[fmt]
    inputs, outputs = inspect(path)
    try:
        manifest = msgspec.convert(
            {
                "sha256": sha256_file(path),
                "size_bytes": size,
                "format": fmt,
                "precision": precision or _guess_precision(fmt, inputs, outputs),
                "name": (name or path.stem)[:128],
                "inputs": inputs,
                "outputs": outputs,
                "recipe": recipe or [],
                "metrics": metrics or {},
                "created": time.time(),
                "target_device": target_device,
                "sequence": sequence,
                "expires": expires,
            },
            ArtifactManifest,
            from_attributes=True,
        )
    except msgspec.ValidationError as exc:
        raise ValidationError(f"manifest of {path} does not fit the wire contract: {exc}") from exc
    key = resolve_signing_key(signing_key)
    return sign_manifest(manifest, key) if key is not None else manifest


class ArtifactDir:
    """Files stored by sha256 under one directory (``{root}/{sha[:2]}/{sha}.{format}``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str, fmt: str) -> Path:
        if not is_sha256_hex(sha256):
            raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
        if fmt not in FORMAT_BY_SUFFIX.values():
            raise ValidationError(f"unknown artifact format {fmt!r}")
        return self.root / sha256[:2] / f"{sha256}.{fmt}"

    def find(self, sha256: str) -> Path | None:
        for fmt in FORMAT_BY_SUFFIX.values():
            candidate = self.path_for(sha256, fmt)
            if candidate.is_file():
                return candidate
        return None

    def add(self, source: str | Path) -> tuple[str, Path]:
        """Copy ``source`` in (atomically; a no-op when already stored); returns (sha256, path)."""
        source = Path(source)
        fmt = format_of(source)
        sha = sha256_file(source)
        target = self.path_for(sha, fmt)
        if target.is_file():
            return sha, target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out, open(source, "rb") as src:
                shutil.copyfileobj(src, out)
                out.flush()
                os.fsync(out.fileno())
            if sha256_file(tmp) != sha:
                raise ArtifactError(f"{source} changed while it was being copied; try again")
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return sha, target
