"""Turn an exporter's exception into an ExportError that names the failing op and layer.

Converters fail deep inside their lowering with messages like ``No lowering for aten.foo.default``;
a user needs to know which layer of *their* model that is. We look for an ATen op name in the
message (or in the chained causes), find the nodes calling it in a ``torch.export`` trace of the model,
and read each node's ``nn_module_stack`` to get the layer's qualified name.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

from host.errors import ExportError

logger = logging.getLogger(__name__)

# The converter's own words: "<file>:<line>:<col>: error: 'tfl.batch_matmul' op found invalid ...".
_CONVERTER_OP = re.compile(
    r"(?:([^\s\"']+\.py):(\d+):\d+: error: )?'((?:tfl|stablehlo|mhlo|tf)\.[A-Za-z0-9_]+)' op ([^\n]*)"
)
# Messages of torch.export's tracer when Python code branches on a tensor's value.
_DATA_DEPENDENT = ("data-dependent", "data dependent", "GuardOnDataDependentSymNode", "UserError")
_ATEN_OP = re.compile(r"\baten[._:]+([A-Za-z0-9_]+)(?:\.([A-Za-z0-9_]+))?")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_MAX_MESSAGE = 600


def _messages(exc: BaseException) -> str:
    seen: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 8:
        seen.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(seen)


def _short(text: str) -> str:
    text = " ".join(_ANSI.sub("", text).split())
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 3] + "..."


def layers_calling(module: Any, examples: tuple[Any, ...], op: str) -> list[str]:
    """Qualified names of the layers whose traced graph calls ATen op ``op`` (e.g. ``"unique"``)."""
    import torch

    try:
        program = torch.export.export(module, examples)
    except Exception:  # noqa: BLE001 - a failing trace just means we cannot name the layer
        return []
    layers = _layers_in(program, op)
    if not layers:
        # Converters report ops after decomposition (fft -> _fft_r2c + view_as_real).
        try:
            layers = _layers_in(program.run_decompositions(), op)
        except Exception:  # noqa: BLE001
            return []
    return layers


def _layers_in(program: Any, op: str) -> list[str]:
    layers: list[str] = []
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        target = str(node.target)
        if not re.search(rf"\b{re.escape(op)}\b", target):
            continue
        stack = node.meta.get("nn_module_stack") or {}
        if len(stack) > 1:
            path, cls = list(stack.values())[-1]
            cls_name = cls if isinstance(cls, str) else getattr(cls, "__name__", str(cls))
            name = f"{path or '<root>'} ({cls_name.rsplit('.', 1)[-1]})"
        else:
            name = "<root forward>"
        if name not in layers:
            layers.append(name)
    return layers


def export_error(
    exc: BaseException, module: Any, examples: tuple[Any, ...], stage: str
) -> ExportError:
    """An ExportError for ``exc`` raised while ``stage`` (e.g. "TFLite conversion") ran."""
    text = _messages(exc)
    converter = _CONVERTER_OP.search(_ANSI.sub("", text))
    if converter is not None:
        source, line, op, why = converter.groups()
        made_from = f" made from {source}:{line}" if source else ""
        return ExportError(
            f"{stage} failed: the converter refused op {op}{made_from}: {_short(why)}. Choose "
            "another format/precision, or rewrite that code with other tensor ops"
        )
    match = _ATEN_OP.search(text)
    op = None
    if match:
        op = f"aten.{match.group(1)}" + (f".{match.group(2)}" if match.group(2) else "")
    layers = layers_calling(module, examples, match.group(1)) if match else []
    if not op:
        frame = _user_frame(exc)
        where = f" at {frame}" if frame else ""
        if any(marker in text for marker in _DATA_DEPENDENT):
            hint = (
                "Replace the failing code with exportable tensor ops (no Python control flow on "
                "tensor values) or choose another format/precision"
            )
        else:
            hint = "Choose another format/precision, or rewrite the failing code"
        return ExportError(f"{stage} failed{where}: {_short(str(exc))}. {hint}")
    where = f" in layer {', '.join(layers)}" if layers else ""
    return ExportError(
        f"{stage} failed: op {op}{where} cannot be exported ({_short(str(exc))}). Replace that "
        "layer with supported ops or choose another format/precision"
    )


def _user_frame(exc: BaseException) -> str | None:
    """The last traceback frame outside torch/litert/onnx: usually the user's forward()."""
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ else []
    text = str(exc)
    located = re.findall(r'File "([^"]+)", line (\d+), in (\w+)', text)
    candidates = [(f, int(l), n) for f, l, n in located] + [
        (f.filename, f.lineno or 0, f.name) for f in frames
    ]
    for filename, lineno, name in reversed(candidates):
        if not any(
            part in filename
            for part in ("site-packages", "/torch/", "litert", "onnx", "host/export")
        ):
            return f"{filename}:{lineno} in {name}()"
    return None
