"""ONNX backend: onnxruntime, on the board's accelerators where its build has them (TensorRT, then
CUDA, as on a Jetson with onnxruntime-gpu), else on CPU; the result names the provider that ran.
Models that reference external data files are refused."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from device_agent.backends import LoadedModel, TensorInfo, installed_version
from device_agent.errors import JobError
from shared.messages import RuntimeInfo

logger = logging.getLogger(__name__)

_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-openvino")
# Execution providers in the order onnxruntime should try them; CPU always comes last. A provider
# that the build lists but cannot start (no CUDA libraries on this board) makes onnxruntime fall
# back to the next, so the list is what the build has, and the result says what was used.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
    "tensor(int16)": "int16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def providers_for(available: list[str]) -> list[str]:
    """The providers to ask for, best first, of those this onnxruntime build has."""
    return [p for p in PREFERRED_PROVIDERS if p in available] + ["CPUExecutionProvider"]


class OnnxBackend:
    name = "onnx"
    formats = ("onnx",)

    def probe(self) -> RuntimeInfo | None:
        version = installed_version("onnxruntime", _DISTRIBUTIONS)
        if version is None:
            return None
        return RuntimeInfo(
            name=self.name, module="onnxruntime", version=version, formats=list(self.formats)
        )

    def load(self, path: str, threads: int | None) -> LoadedModel:
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
        # Loading from bytes leaves the runtime no directory to resolve external data against, so a
        # model pointing at files outside the artifact (unverified, maybe outside the store) fails.
        try:
            session = ort.InferenceSession(
                Path(path).read_bytes(),
                sess_options=options,
                providers=providers_for(ort.get_available_providers()),
            )
        except Exception as exc:
            if "external" in str(exc).lower():
                raise JobError(
                    "external_data_refused",
                    "the ONNX model stores weights in external data files; export it with the "
                    "weights embedded (save_as_external_data=False)",
                ) from exc
            raise
        inputs = session.get_inputs()
        outputs = session.get_outputs()
        names = [o.name for o in outputs]

        def run(feeds: list[Any]) -> list[Any]:
            return list(session.run(names, {i.name: v for i, v in zip(inputs, feeds, strict=True)}))

        def prepare(feeds: list[Any]) -> Any:
            # Inputs bound once and outputs left on the session: run_with_iobinding is the invoke.
            binding = session.io_binding()
            for arg, value in zip(inputs, feeds, strict=True):
                binding.bind_cpu_input(arg.name, value)
            for name in names:
                binding.bind_output(name)
            return lambda: session.run_with_iobinding(binding)

        def info(arg: Any) -> TensorInfo:
            shape = tuple(d if isinstance(d, int) else 1 for d in arg.shape)
            return TensorInfo(name=arg.name, shape=shape, dtype=_ORT_TYPES.get(arg.type, "float32"))

        return LoadedModel(
            runtime=f"onnxruntime {ort.__version__} ({session.get_providers()[0]})",
            inputs=[info(i) for i in inputs],
            outputs=[info(o) for o in outputs],
            run=run,
            prepare=prepare,
        )

    def import_runtime(self) -> None:
        import onnxruntime  # noqa: F401


BACKEND = OnnxBackend()
