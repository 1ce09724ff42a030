"""TFLite backend: ai_edge_litert's Interpreter, or tflite_runtime's where only that is installed."""

from __future__ import annotations

import functools
import logging
from typing import Any

from device_agent.backends import LoadedModel, TensorInfo, installed_version
from shared.messages import RuntimeInfo

logger = logging.getLogger(__name__)

# (module that provides Interpreter, distributions that may install it), in order of preference.
_CANDIDATES = (
    ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
    ("tflite_runtime", ("tflite-runtime", "tflite_runtime")),
)


def _tensor_info(detail: dict[str, Any]) -> TensorInfo:
    scale, zero_point = detail.get("quantization", (0.0, 0))
    return TensorInfo(
        name=str(detail["name"]),
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=detail["dtype"].__name__
        if hasattr(detail["dtype"], "__name__")
        else str(detail["dtype"]),
        scale=float(scale),
        zero_point=int(zero_point),
    )


class TfliteBackend:
    name = "tflite"
    formats = ("tflite",)

    def probe(self) -> RuntimeInfo | None:
        for module, dists in _CANDIDATES:
            version = installed_version(module, dists)
            if version is not None:
                return RuntimeInfo(
                    name=self.name, module=module, version=version, formats=list(self.formats)
                )
        return None

    def load(self, path: str, threads: int | None) -> LoadedModel:
        interpreter_cls, module = self._interpreter_class()
        interpreter = interpreter_cls(model_path=path, num_threads=threads)
        interpreter.allocate_tensors()
        inputs = interpreter.get_input_details()
        outputs = interpreter.get_output_details()

        def run(feeds: list[Any]) -> list[Any]:
            for detail, value in zip(inputs, feeds, strict=True):
                interpreter.set_tensor(detail["index"], value)
            interpreter.invoke()
            return [interpreter.get_tensor(detail["index"]) for detail in outputs]

        def prepare(feeds: list[Any]) -> Any:
            for detail, value in zip(inputs, feeds, strict=True):
                interpreter.set_tensor(detail["index"], value)
            return interpreter.invoke

        return LoadedModel(
            runtime=self._runtime_name(module),
            inputs=[_tensor_info(d) for d in inputs],
            outputs=[_tensor_info(d) for d in outputs],
            run=run,
            prepare=prepare,
        )

    def import_runtime(self) -> None:
        _cls, module = self._interpreter_class()
        self._runtime_name(module)  # the metadata lookup is not load time either

    @functools.cache  # noqa: B019 -- one backend object per process
    def _runtime_name(self, module: str) -> str:
        version = installed_version(module, dict(_CANDIDATES)[module]) or "unknown"
        return f"{module} {version}"

    @staticmethod
    def _interpreter_class() -> tuple[Any, str]:
        try:
            from ai_edge_litert.interpreter import Interpreter

            return Interpreter, "ai_edge_litert"
        except ImportError as first:
            try:
                from tflite_runtime.interpreter import Interpreter  # type: ignore[import-not-found]
            except ImportError:
                # The preferred runtime's failure is the one worth reporting.
                raise first from None
            return Interpreter, "tflite_runtime"


BACKEND = TfliteBackend()
