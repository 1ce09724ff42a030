"""Run an exported file through its own runtime on the host: ai_edge_litert for TFLite,
onnxruntime for ONNX.

A runner feeds one sample at a time at the batch size the file was exported with, casts each input
to the dtype the file declares (litert narrows int64 token ids to int32), quantizes float inputs of
an int8 file with its scale/zero-point and dequantizes int8 outputs, so callers always see float32.
The same runner measures single-sample latency with a given thread count.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from host.data import Split
from host.errors import ExportError
from shared.manifest import QuantParams, TensorSpec

logger = logging.getLogger(__name__)

_DTYPES = {
    "float32": "float32",
    "float16": "float16",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "int32": "int32",
    "int64": "int64",
    "bool": "bool",
}
_ONNX_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
    "tensor(int16)": np.int16,
}


class Runner:
    """Runs one sample (a tuple of arrays with the file's batch size) and returns float32 outputs."""

    batch: int = 1

    def run(self, inputs: tuple[np.ndarray, ...]) -> np.ndarray:
        return self.run_all(inputs)[0]

    def run_all(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """Every output of one run, float32, in the file's output order."""
        raise NotImplementedError

    def run_split(self, split: Split) -> np.ndarray:
        return self.run_split_all(split)[0]

    def run_split_all(self, split: Split) -> list[np.ndarray]:
        """Every output on every sample of ``split`` (samples along axis 0)."""
        if len(split.inputs) != self.input_count:
            raise ExportError(
                f"the model takes {self.input_count} inputs but the data has {len(split.inputs)}"
            )
        outs: list[list[np.ndarray]] = []
        for start in range(0, len(split), self.batch):
            chunk = tuple(a[start : start + self.batch] for a in split.inputs)
            short = self.batch - len(chunk[0])
            if short:
                # The file has a fixed batch: pad the tail with its first sample and drop the extra.
                chunk = tuple(np.concatenate([a] + [a[:1]] * short) for a in chunk)
            run = self.run_all(chunk)
            outs.append([out[: self.batch - short] if short else out for out in run])
        return [np.concatenate(parts) for parts in zip(*outs, strict=True)]

    def latency(self, split: Split, runs: int = 50, warmup: int = 5) -> dict[str, float]:
        if runs < 1:
            raise ExportError(f"runs must be at least 1, got {runs}")
        sample = tuple(a[: self.batch] for a in split.inputs)
        for _ in range(warmup):
            self.run(sample)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            self.run(sample)
            times.append((time.perf_counter() - start) * 1000.0)
        arr = np.array(times)
        return {
            "mean_ms": float(arr.mean()),
            "p50_ms": float(np.percentile(arr, 50)),
            "p90_ms": float(np.percentile(arr, 90)),
            "min_ms": float(arr.min()),
            "runs": float(runs),
            "threads": float(self.threads),
        }

    input_count: int = 1
    threads: int = 1


def _quantize(x: np.ndarray, dtype: Any, quant: tuple[float, int]) -> np.ndarray:
    scale, zero = quant
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


class TfliteRunner(Runner):
    def __init__(self, path: Path, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        try:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
            self.interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ExportError(f"ai_edge_litert cannot load {path}: {exc}") from exc
        self.threads = threads
        self.inputs = _ordered(self.interpreter.get_input_details())
        self.outputs = self.interpreter.get_output_details()
        self.input_count = len(self.inputs)
        self.batch = int(self.inputs[0]["shape"][0]) if len(self.inputs[0]["shape"]) else 1

    def run_all(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        for detail, array in zip(self.inputs, inputs):
            dtype = detail["dtype"]
            scale, zero = detail["quantization"]
            if (
                np.issubdtype(dtype, np.integer)
                and scale
                and np.issubdtype(array.dtype, np.floating)
            ):
                value = _quantize(array, dtype, (scale, zero))
            else:
                value = array.astype(dtype, copy=False)
            self.interpreter.set_tensor(detail["index"], np.ascontiguousarray(value))
        self.interpreter.invoke()
        return [self._output(detail) for detail in self.outputs]

    def _output(self, detail: dict[str, Any]) -> np.ndarray:
        out = self.interpreter.get_tensor(detail["index"])
        scale, zero = detail["quantization"]
        if scale:
            return ((out.astype(np.float32) - zero) * scale).astype(np.float32)
        return out.astype(np.float32)


def _ordered(details: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """litert names inputs ``..._args_{i}``; order by ``i`` so they match the forward() arguments."""

    def key(detail: dict[str, Any]) -> tuple[int, int]:
        match = re.search(r"args_(\d+)", detail["name"])
        return (int(match.group(1)) if match else 1 << 30, detail["index"])

    return sorted(details, key=key)


class OnnxRunner(Runner):
    def __init__(self, path: Path, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(
                str(path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load {path}: {exc}") from exc
        self.threads = threads
        self.inputs = self.session.get_inputs()
        self.input_count = len(self.inputs)
        first = self.inputs[0].shape[0] if self.inputs[0].shape else 1
        self.batch = first if isinstance(first, int) and first > 0 else 1

    def run_all(self, inputs: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        feed = {
            spec.name: np.ascontiguousarray(
                a.astype(_ONNX_TYPES.get(spec.type, np.float32), copy=False)
            )
            for spec, a in zip(self.inputs, inputs)
        }
        return [np.asarray(out).astype(np.float32) for out in self.session.run(None, feed)]


def open_runner(path: Path, threads: int = 1) -> Runner:
    if not path.is_file():
        raise ExportError(f"exported file {path} does not exist")
    if path.suffix == ".tflite":
        return TfliteRunner(path, threads)
    if path.suffix == ".onnx":
        return OnnxRunner(path, threads)
    raise ExportError(f"no host runtime for {path.name}: expected .tflite or .onnx")


def describe_io(path: Path) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """Input and output specs (name, shape, dtype, quantization) as the manifest carries them."""
    if path.suffix == ".tflite":
        runner = TfliteRunner(path)
        return (
            [_tflite_spec(d) for d in runner.inputs],
            [_tflite_spec(d) for d in runner.outputs],
        )
    runner_onnx = OnnxRunner(path)
    return (
        [_onnx_spec(a) for a in runner_onnx.session.get_inputs()],
        [_onnx_spec(a) for a in runner_onnx.session.get_outputs()],
    )


def _tflite_spec(detail: dict[str, Any]) -> TensorSpec:
    dtype = _DTYPES.get(np.dtype(detail["dtype"]).name, "float32")
    scale, zero = detail["quantization"]
    quant = QuantParams(scale=[float(scale)], zero_point=[int(zero)]) if scale else None
    return TensorSpec(
        name=str(detail["name"])[:128],
        shape=[int(d) for d in detail["shape"]],
        dtype=dtype,
        quant=quant,
    )


def _onnx_spec(arg: Any) -> TensorSpec:
    dtype = np.dtype(_ONNX_TYPES.get(arg.type, np.float32)).name
    shape = [d if isinstance(d, int) else -1 for d in (arg.shape or [])]
    return TensorSpec(name=str(arg.name)[:128], shape=shape, dtype=_DTYPES.get(dtype, "float32"))
