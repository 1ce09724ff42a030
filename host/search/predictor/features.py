"""What the predictor sees: the exported graph (op kinds with their MACs, parameters, shapes,
precision), how it is run (threads, runtime) and the board's class (from its birth message).

Graph features are read from the file itself (a .tflite through the interpreter's op list, an .onnx
through onnx's shape inference), never from the torch module, so any file a user brings has them.
Ops are folded into a few kinds (conv, depthwise conv, dense/matmul, elementwise, other) and each
kind's MACs and op count are split by whether the op computes in int8 or in float: a mixed-
precision file and a full-int8 one of the same model differ exactly there.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from host.errors import HostError

logger = logging.getLogger(__name__)

# Bumped whenever the features of a file change meaning: cached features of another version are
# computed again.
FEATURES_VERSION = 1

KINDS = ("conv", "dwconv", "dense", "eltwise", "other")
_TFLITE_KINDS = {
    "CONV_2D": "conv",
    "CONV_3D": "conv",
    "TRANSPOSE_CONV": "conv",
    "DEPTHWISE_CONV_2D": "dwconv",
    "FULLY_CONNECTED": "dense",
    "BATCH_MATMUL": "dense",
    "ADD": "eltwise",
    "MUL": "eltwise",
    "SUB": "eltwise",
    "DIV": "eltwise",
    "RELU": "eltwise",
    "RELU6": "eltwise",
    "LOGISTIC": "eltwise",
    "TANH": "eltwise",
    "HARD_SWISH": "eltwise",
    "GELU": "eltwise",
    "SOFTMAX": "eltwise",
    "RSQRT": "eltwise",
    "SQUARED_DIFFERENCE": "eltwise",
    "MEAN": "eltwise",
    "SUM": "eltwise",
}
_ONNX_KINDS = {
    "Conv": "conv",
    "ConvInteger": "conv",
    "QLinearConv": "conv",
    "ConvTranspose": "conv",
    "MatMul": "dense",
    "MatMulInteger": "dense",
    "QLinearMatMul": "dense",
    "Gemm": "dense",
    "Add": "eltwise",
    "Mul": "eltwise",
    "Sub": "eltwise",
    "Div": "eltwise",
    "Relu": "eltwise",
    "Clip": "eltwise",
    "Sigmoid": "eltwise",
    "Tanh": "eltwise",
    "HardSwish": "eltwise",
    "Gelu": "eltwise",
    "Softmax": "eltwise",
    "Erf": "eltwise",
    "Sqrt": "eltwise",
    "ReduceMean": "eltwise",
    "Pow": "eltwise",
    "LayerNormalization": "eltwise",
}
_INT8_ONNX = {"ConvInteger", "QLinearConv", "MatMulInteger", "QLinearMatMul"}


class FeatureError(HostError):
    """A file's graph cannot be read for the predictor."""


@dataclass
class GraphFeatures:
    """The exported file's graph, summarized (see the module doc)."""

    format: str
    precision: str
    size_bytes: int
    params: int
    ops: int
    # kind -> [float MACs, int8 MACs, float ops, int8 ops]
    kinds: dict[str, list[float]] = field(default_factory=dict)
    input_elements: int = 0
    output_elements: int = 0
    largest_activation: int = 0
    version: int = FEATURES_VERSION

    @property
    def macs(self) -> float:
        return sum(v[0] + v[1] for v in self.kinds.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GraphFeatures:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass(frozen=True)
class BoardClass:
    """Boards that should run a model alike: same CPU, cores, memory class, flags and quota."""

    arch: str
    cpu_model: str
    cores: int
    ram_gb: int
    cpu_flags: tuple[str, ...] = ()
    cpu_quota: float | None = None

    @property
    def key(self) -> str:
        text = "|".join(
            (
                self.arch,
                self.cpu_model,
                str(self.cores),
                str(self.ram_gb),
                ",".join(self.cpu_flags),
                "" if self.cpu_quota is None else f"{self.cpu_quota:g}",
            )
        )
        return hashlib.sha256(text.encode()).hexdigest()[:12]

    def describe(self) -> str:
        quota = "" if self.cpu_quota is None else f", quota {self.cpu_quota:g} CPU"
        return f"{self.cpu_model} ({self.arch}, {self.cores} cores, {self.ram_gb} GB{quota})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "cpu_flags": list(self.cpu_flags), "key": self.key}

    @classmethod
    def from_birth(cls, birth: Mapping[str, Any] | Any) -> BoardClass:
        """The class of a board from its birth message (a dict as stored, or a Birth)."""
        get = birth.get if isinstance(birth, Mapping) else lambda k, d=None: getattr(birth, k, d)
        quota = get("cpu_quota")
        return cls(
            arch=str(get("arch") or "unknown"),
            cpu_model=str(get("cpu_model") or "unknown"),
            cores=int(get("cores") or 1),
            ram_gb=max(1, round(float(get("ram_mb") or 0) / 1024)),
            cpu_flags=tuple(sorted(str(f) for f in (get("cpu_flags") or ()))),
            cpu_quota=None if quota is None else float(quota),
        )


# Flags whose presence changes kernel speed by a lot: one 0/1 feature each.
FLAG_FEATURES = ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp", "i8mm")
PRECISIONS = ("fp32", "fp16", "int8_dynamic", "int8", "qat_int8")
RUNTIMES = ("tflite", "onnx")


def feature_names() -> list[str]:
    names = ["log_size", "log_params", "log_macs", "ops", "int8_share", "log_in", "log_out"]
    names += ["log_largest_activation"]
    for kind in KINDS:
        names += [f"log_{kind}_float_macs", f"log_{kind}_int8_macs", f"{kind}_ops"]
    names += [f"precision_{p}" for p in PRECISIONS]
    names += [f"runtime_{r}" for r in RUNTIMES]
    names += ["threads", "effective_cpus", "log_effective_cpus", "cores", "ram_gb", "x86", "arm"]
    names += [f"flag_{f}" for f in FLAG_FEATURES]
    return names


def _log(value: float) -> float:
    return math.log1p(max(float(value), 0.0))


def vector(
    graph: GraphFeatures, threads: int | None, runtime: str, board: BoardClass
) -> list[float]:
    """One row of the predictor's input, in :func:`feature_names` order."""
    int8_macs = sum(v[1] for v in graph.kinds.values())
    total = graph.macs
    threads_used = max(1, min(threads or 1, board.cores))
    effective = float(threads_used)
    if board.cpu_quota is not None:
        effective = min(effective, board.cpu_quota)
    row = [
        _log(graph.size_bytes),
        _log(graph.params),
        _log(total),
        float(graph.ops),
        int8_macs / total if total else 0.0,
        _log(graph.input_elements),
        _log(graph.output_elements),
        _log(graph.largest_activation),
    ]
    for kind in KINDS:
        f_macs, i_macs, f_ops, i_ops = graph.kinds.get(kind, [0.0, 0.0, 0.0, 0.0])
        row += [_log(f_macs), _log(i_macs), f_ops + i_ops]
    row += [1.0 if graph.precision == p else 0.0 for p in PRECISIONS]
    row += [1.0 if runtime == r else 0.0 for r in RUNTIMES]
    row += [
        float(threads_used),
        effective,
        math.log(effective),
        float(board.cores),
        float(board.ram_gb),
        1.0 if board.arch in ("x86_64", "amd64", "i686") else 0.0,
        1.0 if board.arch in ("aarch64", "arm64", "armv7l", "armv8l") else 0.0,
    ]
    flags = set(board.cpu_flags)
    row += [1.0 if f in flags else 0.0 for f in FLAG_FEATURES]
    return row


# ---------------------------------------------------------------- reading files


def graph_features(path: str | Path, precision: str | None = None) -> GraphFeatures:
    """The graph features of an exported .tflite or .onnx file; FeatureError when unreadable."""
    path = Path(path)
    if not path.is_file():
        raise FeatureError(f"{path} does not exist")
    try:
        if path.suffix == ".tflite":
            return _tflite(path, precision)
        if path.suffix == ".onnx":
            return _onnx(path, precision)
    except FeatureError:
        raise
    except Exception as exc:  # noqa: BLE001 - the runtimes' parsers raise their own errors
        raise FeatureError(f"cannot read the graph of {path.name}: {type(exc).__name__}: {exc}")
    raise FeatureError(f"{path.name}: only .tflite and .onnx files have graph features")


def _add(kinds: dict[str, list[float]], kind: str, macs: float, int8: bool) -> None:
    entry = kinds.setdefault(kind, [0.0, 0.0, 0.0, 0.0])
    entry[1 if int8 else 0] += float(macs)
    entry[3 if int8 else 2] += 1.0


def _prod(shape: Any) -> int:
    return int(math.prod(max(int(d), 1) for d in shape)) if len(shape) else 1


def _tflite(path: Path, precision: str | None) -> GraphFeatures:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    interpreter = Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
    )
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    kinds: dict[str, list[float]] = {}
    params = 0
    constant: set[int] = set()
    ops_seen = 0
    largest = 0
    produced = set()
    # A private but stable accessor (bench.models reads ops the same way).
    ops = interpreter._get_ops_details()
    for op in ops:
        produced.update(i for i in op["outputs"] if i >= 0)
    # Not produced by any op and not a model input: a weight, a bias or a constant.
    produced.update(t["index"] for t in interpreter.get_input_details())
    for op in ops:
        ops_seen += 1
        name = op["op_name"]
        inputs = [tensors[i] for i in op["inputs"] if i >= 0 and i in tensors]
        outputs = [tensors[i] for i in op["outputs"] if i >= 0 and i in tensors]
        for t in inputs:
            if t["index"] not in produced and t["index"] not in constant:
                constant.add(t["index"])
                params += _prod(t["shape"])
        out_elems = _prod(outputs[0]["shape"]) if outputs else 0
        largest = max(largest, out_elems)
        dtypes = {np.dtype(t["dtype"]).name for t in inputs[:1]}
        int8 = bool(dtypes & {"int8", "uint8"})
        kind = _TFLITE_KINDS.get(name, "other")
        macs = float(out_elems)
        if name in ("CONV_2D", "TRANSPOSE_CONV") and len(inputs) > 1:
            w = inputs[1]["shape"]  # [out, kh, kw, in]
            macs = out_elems * _prod(w[1:])
        elif name == "DEPTHWISE_CONV_2D" and len(inputs) > 1:
            w = inputs[1]["shape"]  # [1, kh, kw, out]
            macs = out_elems * _prod(w[1:3])
        elif name == "FULLY_CONNECTED" and len(inputs) > 1:
            w = inputs[1]["shape"]  # [out, in]
            macs = out_elems * int(w[-1])
        elif name == "BATCH_MATMUL" and len(inputs) > 1:
            a = inputs[0]["shape"]
            macs = out_elems * int(a[-1])
        _add(kinds, kind, macs, int8)
    ins = interpreter.get_input_details()
    outs = interpreter.get_output_details()
    return GraphFeatures(
        format="tflite",
        precision=precision or _tflite_precision(kinds, tensors),
        size_bytes=path.stat().st_size,
        params=params,
        ops=ops_seen,
        kinds=kinds,
        input_elements=sum(_prod(t["shape"]) for t in ins),
        output_elements=sum(_prod(t["shape"]) for t in outs),
        largest_activation=largest,
    )


def _tflite_precision(kinds: dict[str, list[float]], tensors: dict[int, Any]) -> str:
    int8 = sum(v[1] for v in kinds.values())
    total = sum(v[0] + v[1] for v in kinds.values())
    if total and int8 / total > 0.5:
        return "int8"
    import numpy as np

    if any(np.dtype(t["dtype"]).name == "float16" for t in tensors.values()):
        return "fp16"
    return "fp32"


def _onnx(path: Path, precision: str | None) -> GraphFeatures:
    import onnx
    from onnx import numpy_helper, shape_inference

    model = onnx.load(str(path))
    try:
        model = shape_inference.infer_shapes(model)
    except Exception as exc:  # noqa: BLE001 - shapes only sharpen the MAC counts
        logger.debug("no ONNX shape inference for %s: %s", path.name, exc)
    graph = model.graph
    shapes: dict[str, list[int]] = {}
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_value if d.dim_value > 0 else 1 for d in dims]
    inits = {init.name: init for init in graph.initializer}
    for name, init in inits.items():
        shapes[name] = list(init.dims)
    params = sum(int(math.prod(init.dims)) if init.dims else 1 for init in inits.values())
    kinds: dict[str, list[float]] = {}
    largest = 0
    quantized = False
    for node in graph.node:
        out_shape = shapes.get(node.output[0], []) if node.output else []
        out_elems = _prod(out_shape) if out_shape else 0
        largest = max(largest, out_elems)
        int8 = node.op_type in _INT8_ONNX or node.op_type.startswith("QLinear")
        if node.op_type in ("DynamicQuantizeLinear", "QuantizeLinear"):
            quantized = True
        kind = _ONNX_KINDS.get(node.op_type, "other")
        macs = float(out_elems)
        if kind == "conv" and len(node.input) > 1:
            w_index = 3 if node.op_type == "QLinearConv" else 1
            w = shapes.get(node.input[w_index], [])
            if len(w) >= 3:
                macs = out_elems * _prod(w[1:])
                group = next((a.i for a in node.attribute if a.name == "group"), 1)
                if group > 1 and w[1] == 1:
                    kind = "dwconv"
        elif kind == "dense" and node.input:
            a = shapes.get(node.input[0], [])
            if a:
                macs = out_elems * int(a[-1])
        _add(kinds, kind, macs, int8)
    del numpy_helper
    ins = [v for v in graph.input if v.name not in inits]
    return GraphFeatures(
        format="onnx",
        precision=precision or ("int8_dynamic" if quantized else "fp32"),
        size_bytes=path.stat().st_size,
        params=params,
        ops=len(graph.node),
        kinds=kinds,
        input_elements=sum(_prod(shapes.get(v.name, [])) for v in ins),
        output_elements=sum(_prod(shapes.get(v.name, [])) for v in graph.output),
        largest_activation=largest,
    )


__all__ = [
    "FEATURES_VERSION",
    "BoardClass",
    "FeatureError",
    "GraphFeatures",
    "feature_names",
    "graph_features",
    "vector",
]
