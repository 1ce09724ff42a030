"""TFLite backend: ai_edge_litert's Interpreter, or tflite_runtime's where only that is installed.

Float and int8 models run on the runtime's built-in XNNPACK delegate with the job's thread count.
A model compiled for the Coral Edge TPU (it holds ``edgetpu-custom-op``) runs through libedgetpu's
delegate, and is refused with a clear error on a board without it.
"""

from __future__ import annotations

import functools
import logging
import mmap
from typing import Any

from device_agent.backends import LoadedModel, TensorInfo, installed_version
from device_agent.errors import JobError
from shared.messages import RuntimeInfo

logger = logging.getLogger(__name__)

# (module that provides Interpreter, distributions that may install it), in order of preference.
_CANDIDATES = (
    ("ai_edge_litert", ("ai-edge-litert", "ai-edge-litert-nightly")),
    ("tflite_runtime", ("tflite-runtime", "tflite_runtime")),
)


EDGETPU_OP = b"edgetpu-custom-op"
EDGETPU_LIBRARY = "libedgetpu.so.1"


def compiled_for_edgetpu(path: str) -> bool:
    """Whether edgetpu_compiler made this file (its graph calls the Edge TPU custom op)."""
    with open(path, "rb") as handle:
        try:
            with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
                return data.find(EDGETPU_OP) != -1
        except ValueError:  # an empty file cannot be mapped
            return False


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
        delegates = [self._edgetpu_delegate(module)] if compiled_for_edgetpu(path) else []
        interpreter = interpreter_cls(
            model_path=path, num_threads=threads, experimental_delegates=delegates or None
        )
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
            runtime=self._runtime_name(module) + (" + edgetpu" if delegates else ""),
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
    def _edgetpu_delegate(module: str) -> Any:
        load_delegate = __import__(
            f"{module}.interpreter", fromlist=["load_delegate"]
        ).load_delegate
        try:
            return load_delegate(EDGETPU_LIBRARY)
        except (OSError, ValueError, RuntimeError) as exc:
            raise JobError(
                "delegate_unavailable",
                f"the model is compiled for the Edge TPU but {EDGETPU_LIBRARY} cannot be loaded "
                f"({exc}); install libedgetpu1-std and plug in the Coral, or send the model "
                "before edgetpu_compiler",
            ) from exc

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
