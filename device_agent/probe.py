"""Which accelerators actually load here, found by trying them in a short-lived process.

    python -m device_agent.probe        # prints {"delegates": [...]} as JSON

The agent runs this once at start (:func:`probe_delegates`) so that importing the runtimes never
grows its own memory. Listed are only what loads:

- TFLite (ai-edge-litert, else tflite-runtime): ``xnnpack`` when an interpreter can be created (it is
  built in and takes the thread count), ``gpu`` and ``edgetpu`` when ``load_delegate`` succeeds on
  the GPU delegate and on libedgetpu.
- ONNX Runtime: ``onnx:<provider>`` for each available execution provider (CUDA, TensorRT, ...)
  with which a session on a tiny in-memory model can be created.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from typing import Any

logger = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 30.0
_TFLITE_DELEGATES = {
    "gpu": ("libtensorflowlite_gpu_delegate.so",),
    "edgetpu": ("libedgetpu.so.1", "libedgetpu.1.dylib", "edgetpu.dll"),
}

# Execution providers that run nothing on this board (remote inference).
_NOT_LOCAL = frozenset({"AzureExecutionProvider"})


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def tiny_onnx_model() -> bytes:
    """An ONNX model ``y = Identity(x)`` on a float[1] tensor, as protobuf bytes (no onnx package)."""

    def value_info(name: str) -> bytes:
        shape = _field(2, _field(1, _field(1, 1)))  # TensorShapeProto.dim { dim_value: 1 }
        tensor_type = _field(1, _field(1, 1) + shape)  # elem_type FLOAT
        return _field(1, name.encode()) + _field(2, tensor_type)

    node = _field(1, b"x") + _field(2, b"y") + _field(4, b"Identity")
    graph = _field(1, node) + _field(2, b"probe") + _field(11, value_info("x"))
    graph += _field(12, value_info("y"))
    opset = _field(1, b"") + _field(2, 13)
    return _field(1, 8) + _field(7, graph) + _field(8, opset)


def _tflite_delegates() -> list[str]:
    try:
        from ai_edge_litert.interpreter import Interpreter, load_delegate
    except ImportError:
        try:
            from tflite_runtime.interpreter import (  # type: ignore[import-not-found]
                Interpreter,
                load_delegate,
            )
        except ImportError:
            return []
    found = []
    if Interpreter is not None:
        found.append("xnnpack")  # built into every interpreter; num_threads sets its threads
    for name, libraries in _TFLITE_DELEGATES.items():
        for library in libraries:
            try:
                load_delegate(library)
            except (ValueError, OSError, RuntimeError):
                continue
            found.append(name)
            break
    return found


def _onnx_providers() -> list[str]:
    try:
        import onnxruntime as ort
    except ImportError:
        return []
    ort.set_default_logger_severity(4)
    model = tiny_onnx_model()
    found = []
    for provider in ort.get_available_providers():
        if provider in _NOT_LOCAL:
            continue
        try:
            session = ort.InferenceSession(model, providers=[provider])
        except Exception as exc:  # noqa: BLE001 -- a provider that fails to load is not listed
            print(f"{provider} does not load: {exc}", file=sys.stderr)
            continue
        # A provider that cannot initialise makes ONNX Runtime fall back silently: check it stuck.
        if provider in session.get_providers():
            found.append(f"onnx:{provider}")
    return found


def probe() -> dict[str, Any]:
    return {"delegates": _tflite_delegates() + _onnx_providers()}


def probe_delegates(python: str = sys.executable) -> list[str] | None:
    """Run the probe in a fresh process; None when it fails (the caller falls back)."""
    try:
        done = subprocess.run(
            [python, "-m", "device_agent.probe"],
            capture_output=True, text=True, timeout=PROBE_TIMEOUT_S, check=False,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as exc:
        logger.warning("runtime probe did not finish: %s", exc)
        return None
    try:
        lines = done.stdout.strip().splitlines()
        data = json.loads(lines[-1]) if lines else {}
    except ValueError:
        data = {}
    found = data.get("delegates") if isinstance(data, dict) else None
    if done.returncode != 0 or not isinstance(found, list):
        logger.warning("runtime probe failed (exit %s): %s", done.returncode, done.stderr[-500:])
        return None
    return [str(item)[:128] for item in found][:16]


def main() -> int:
    logging.disable(logging.CRITICAL)
    print(json.dumps(probe()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
