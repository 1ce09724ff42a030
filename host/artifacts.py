"""Host-side artifacts: a content-addressed directory and manifests built from the files themselves.

``manifest_for_file`` inspects a ``.tflite`` (LiteRT interpreter), an ``.onnx`` (onnxruntime session)
or an eval ``.npz`` and returns a :class:`shared.manifest.ArtifactManifest` whose tensor specs come
from the file, not from what the caller believes it exported; with a signing key it is signed
(shared.signing) so that agents provisioned with the matching trust key accept it.

An ``.npz`` is read from its zip directory and each array's ``.npy`` header alone: its shapes and
dtypes are known, and checked against a bound, before any array is inflated. A file that arrived
over the network (an upload to the service) is inspected under :class:`UploadLimits`: a ``.tflite``
or ``.onnx`` is parsed in a worker process (``python -m host.artifacts``) with a bound on its
address space and time, so a hostile file can cost the service neither its memory nor its event
loop, and every message names the file as the client called it, never a path on the server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
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


class ArtifactTooLargeError(ArtifactError):
    """An artifact is larger than a bound: as sent, inflated, or to parse."""


@dataclass(frozen=True)
class UploadLimits:
    """What one uploaded artifact may cost the service.

    ``max_bytes``: the file as sent. ``max_array_bytes``: an ``.npz``'s arrays once inflated, all
    together (from the shapes and dtypes their headers declare, and the zip's own sizes).
    ``parse_memory_bytes`` + ``parse_memory_per_byte`` x the file's size: the address space of the
    worker that parses a ``.tflite``/``.onnx``, which gets ``parse_timeout_s``; at most
    ``parse_workers`` parse at once.
    """

    max_bytes: int = MAX_ARTIFACT_BYTES
    max_array_bytes: int = 1024**3
    max_members: int = 64
    parse_memory_bytes: int = 1024**3
    parse_memory_per_byte: int = 3
    parse_timeout_s: float = 120.0
    parse_workers: int = 2

    def parse_memory_for(self, size: int) -> int:
        return self.parse_memory_bytes + self.parse_memory_per_byte * size


_REPO_ROOT = Path(__file__).resolve().parents[1]
_parse_slots: dict[int, threading.BoundedSemaphore] = {}
_parse_slots_lock = threading.Lock()


def _mib(n: int) -> str:
    return f"{n / 1024**2:.0f} MiB"


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


def _tflite_specs(path: Path, label: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_path=str(path))
    except (ValueError, RuntimeError) as exc:
        detail = str(exc).replace(str(path), label)
        raise ArtifactError(f"{label} is not a valid TFLite model: {detail}") from exc

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


def _onnx_specs(path: Path, label: str) -> tuple[list[TensorSpec], list[TensorSpec]]:
    import onnxruntime as ort

    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own unrelated exception types
        detail = str(exc).replace(str(path), label)
        raise ArtifactError(f"{label} is not a valid ONNX model: {detail}") from exc

    def spec(arg: Any) -> TensorSpec:
        if arg.type not in _ONNX_DTYPES:
            raise ArtifactError(f"{label}: tensor {arg.name} has unsupported type {arg.type}")
        # Symbolic (batch) dimensions are announced as -1, as TFLite's shape_signature does.
        shape = [d if isinstance(d, int) else -1 for d in arg.shape]
        return TensorSpec(name=str(arg.name)[:128], shape=shape, dtype=_ONNX_DTYPES[arg.type])

    return [spec(a) for a in session.get_inputs()], [spec(a) for a in session.get_outputs()]


def npz_arrays(
    path: Path, *, label: str | None = None, limits: UploadLimits | None = None
) -> dict[str, tuple[list[int], str]]:
    """Array name -> (shape, dtype) of an ``.npz``, read from its zip directory and ``.npy``
    headers without inflating any array; with ``limits``, refused (:class:`ArtifactTooLargeError`)
    when the arrays would inflate past ``limits.max_array_bytes``."""
    import numpy as np
    from numpy.lib import format as npy

    label = label or str(path)
    unreadable = f"{label} is not a readable .npz of plain arrays"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if limits is not None:
                if len(members) > limits.max_members:
                    raise ArtifactError(
                        f"{label} holds {len(members)} arrays; an eval .npz holds at most "
                        f"{limits.max_members}"
                    )
                inflated = sum(m.file_size for m in members)
                if inflated > limits.max_array_bytes:
                    raise ArtifactTooLargeError(
                        f"{label} inflates to {_mib(inflated)}; uploaded arrays are at most "
                        f"{_mib(limits.max_array_bytes)} together"
                    )
            arrays: dict[str, tuple[list[int], str]] = {}
            declared = 0
            for member in members:
                if not member.filename.endswith(".npy") or member.is_dir():
                    raise ArtifactError(f"{unreadable}: it holds {member.filename[:64]!r}")
                with archive.open(member) as stream:
                    version = npy.read_magic(stream)
                    if version == (1, 0):
                        shape, _fortran, dtype = npy.read_array_header_1_0(stream)
                    elif version == (2, 0):
                        shape, _fortran, dtype = npy.read_array_header_2_0(stream)
                    else:
                        raise ArtifactError(f"{unreadable}: .npy format {version} is not supported")
                    header = stream.tell()
                if dtype.hasobject:
                    # allow_pickle=False everywhere: an eval file is data, never code.
                    raise ArtifactError(
                        f"{unreadable}: {member.filename[:64]} holds Python objects"
                    )
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes + header > member.file_size:
                    raise ArtifactError(
                        f"{unreadable}: {member.filename[:64]} declares more data than it holds"
                    )
                declared += nbytes
                if limits is not None and declared > limits.max_array_bytes:
                    raise ArtifactTooLargeError(
                        f"{label}'s arrays take {_mib(declared)} or more; uploaded arrays are at "
                        f"most {_mib(limits.max_array_bytes)} together"
                    )
                arrays[member.filename[: -len(".npy")]] = (
                    [int(d) for d in shape],
                    np.dtype(dtype).name,
                )
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, NotImplementedError) as exc:
        raise ArtifactError(f"{unreadable}: {str(exc).replace(str(path), label)}") from exc
    return arrays


def _npz_specs(
    path: Path, label: str, limits: UploadLimits | None = None
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    arrays = npz_arrays(path, label=label, limits=limits)
    inputs = sorted(n for n in arrays if n == "x" or (n.startswith("x") and n[1:].isdigit()))
    if not inputs:
        raise ArtifactError(
            f"{label}: an eval .npz needs an array 'x' (or x0..xN); has {sorted(arrays)}"
        )
    outputs = [n for n in ("y", "ref") if n in arrays]
    make = lambda n: TensorSpec(name=n, shape=arrays[n][0], dtype=_dtype_name(arrays[n][1]))
    return [make(n) for n in inputs], [make(n) for n in outputs]


def _has_tflite_identifier(path: Path) -> bool:
    """A TFLite flatbuffer names its schema at bytes 4-8; anything else is not worth parsing."""
    with open(path, "rb") as handle:
        return handle.read(8)[4:8] == b"TFL3"


def _read_varint(handle: Any) -> int | None:
    value = 0
    for shift in range(0, 64, 7):
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
    return None


def _is_protobuf_message(path: Path) -> bool:
    """Whether the file's top level reads as protobuf fields that end with the file (an ONNX model
    is a ModelProto): only the tags and lengths are read, nothing is decoded."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        while handle.tell() < size:
            tag = _read_varint(handle)
            if tag is None or tag >> 3 == 0:
                return False
            wire = tag & 7
            if wire == 0:
                if _read_varint(handle) is None:
                    return False
            elif wire in (1, 5):
                handle.seek(8 if wire == 1 else 4, os.SEEK_CUR)
            elif wire == 2:
                length = _read_varint(handle)
                if length is None:
                    return False
                handle.seek(length, os.SEEK_CUR)
            else:  # groups (3, 4) are not in ONNX's schema; 6 and 7 do not exist
                return False
        return handle.tell() == size


def _parse_slot(workers: int) -> threading.BoundedSemaphore:
    with _parse_slots_lock:
        return _parse_slots.setdefault(workers, threading.BoundedSemaphore(workers))


def _bounded_model_specs(
    path: Path, fmt: str, label: str, limits: UploadLimits
) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Parse a .tflite/.onnx in a worker process bounded in address space and time."""
    memory = limits.parse_memory_for(path.stat().st_size)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(_REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p
    )}  # fmt: skip
    command = [sys.executable, "-m", "host.artifacts", fmt, str(path), label, str(memory)]
    with _parse_slot(limits.parse_workers):
        try:
            done = subprocess.run(
                command, capture_output=True, timeout=limits.parse_timeout_s, env=env,
                stdin=subprocess.DEVNULL, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise ArtifactTooLargeError(
                f"{label}: parsing it took longer than {limits.parse_timeout_s:.0f} s"
            ) from None
    try:
        answer = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
    except (ValueError, IndexError):
        answer = None
    if done.returncode == 0 and isinstance(answer, dict) and "inputs" in answer:
        return (
            msgspec.convert(answer["inputs"], list[TensorSpec]),
            msgspec.convert(answer["outputs"], list[TensorSpec]),
        )
    if isinstance(answer, dict) and isinstance(answer.get("error"), str):
        kind = ArtifactTooLargeError if answer.get("too_large") else ArtifactError
        raise kind(answer["error"])
    # Killed by the runtime's own abort on a failed allocation, or by a signal.
    logger.warning("inspecting %s ended with code %s", label, done.returncode)
    raise ArtifactTooLargeError(
        f"{label}: parsing it needed more than {_mib(memory)} of memory, or it is malformed"
    )


def _worker_main(argv: list[str]) -> int:
    """``python -m host.artifacts FORMAT PATH LABEL MAX_ADDRESS_SPACE``: tensor specs as JSON."""

    fmt, path, label, memory = argv[0], Path(argv[1]), argv[2], int(argv[3])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    try:
        inspect = {"tflite": _tflite_specs, "onnx": _onnx_specs}[fmt]
        inputs, outputs = inspect(path, label)
        answer: dict[str, Any] = {"inputs": inputs, "outputs": outputs}
        code = 0
    except MemoryError:
        answer = {"error": f"{label}: parsing it needed more than {_mib(memory)} of memory",
                  "too_large": True}  # fmt: skip
        code = 1
    except ArtifactError as exc:
        answer, code = {"error": str(exc)}, 1
    sys.stdout.write("\n" + json.dumps(msgspec.to_builtins(answer)) + "\n")
    sys.stdout.flush()
    return code


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
    label: str | None = None,
    limits: UploadLimits | None = None,
) -> ArtifactManifest:
    """Build (and sign, when given a key) the manifest of a .tflite, .onnx or eval .npz file.

    ``precision`` defaults to what the tensors show (int8 when inputs/outputs are quantized, else
    fp32; "data" for .npz); pass it explicitly for dynamic-range or weight-only quantized models,
    whose inputs and outputs stay float.

    With ``limits`` (a file that came over the network) the file is inspected within them, and
    messages name it ``label`` (what the client called it), never by its path on this machine.
    """
    path = Path(path)
    label = label or str(path)
    fmt = format_of(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ArtifactError(f"cannot read artifact {label}: {exc.strerror or exc}") from exc
    cap = MAX_ARTIFACT_BYTES if limits is None else min(limits.max_bytes, MAX_ARTIFACT_BYTES)
    if size > cap:
        raise ArtifactTooLargeError(f"{label} has {_mib(size)}; an artifact is at most {_mib(cap)}")
    if size == 0:
        raise ArtifactError(f"{label} is empty")
    if fmt == "tflite" and not _has_tflite_identifier(path):
        raise ArtifactError(f"{label} is not a valid TFLite model: it lacks the TFL3 identifier")
    if fmt == "onnx" and not _is_protobuf_message(path):
        raise ArtifactError(f"{label} is not a valid ONNX model: it is not a protobuf message")
    if fmt == "npz":
        inputs, outputs = _npz_specs(path, label, limits)
    elif limits is not None:
        inputs, outputs = _bounded_model_specs(path, fmt, label, limits)
    else:
        inputs, outputs = (_tflite_specs if fmt == "tflite" else _onnx_specs)(path, label)
    try:
        manifest = msgspec.convert(
            {
                "sha256": sha256_file(path),
                "size_bytes": size,
                "format": fmt,
                "precision": precision or _guess_precision(fmt, inputs, outputs),
                "name": (name or Path(label).stem)[:128],
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
        raise ValidationError(f"manifest of {label} does not fit the wire contract: {exc}") from exc
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


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1:]))
