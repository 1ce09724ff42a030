"""The backends use the board's accelerators where present and say which one ran. No GPU, TensorRT
or Coral exists here: the provider order is checked on a given list, and an Edge TPU model is
checked to be refused clearly without libedgetpu."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from device_agent.backends.onnx import BACKEND as ONNX
from device_agent.backends.onnx import providers_for
from device_agent.backends.tflite import BACKEND as TFLITE
from device_agent.backends.tflite import EDGETPU_OP, compiled_for_edgetpu
from device_agent.errors import JobError


def test_onnx_asks_for_tensorrt_then_cuda_then_cpu_given_a_jetson_like_provider_list() -> None:
    jetson = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert providers_for(["AzureExecutionProvider", *reversed(jetson)]) == jetson
    assert providers_for(["AzureExecutionProvider", "CPUExecutionProvider"]) == [
        "CPUExecutionProvider"
    ]


def test_an_onnx_result_names_the_execution_provider_that_ran(model_dir: Path) -> None:
    loaded = ONNX.load(str(model_dir / "float.onnx"), threads=1)
    assert loaded.runtime.startswith("onnxruntime ")
    assert loaded.runtime.endswith("(CPUExecutionProvider)")  # the only one this machine has


def test_a_model_compiled_for_the_edge_tpu_is_refused_clearly_on_a_board_without_libedgetpu(
    model_dir: Path, tmp_path: Path
) -> None:
    plain = model_dir / "int8.tflite"
    assert not compiled_for_edgetpu(str(plain))
    assert "edgetpu" not in TFLITE.load(str(plain), threads=1).runtime
    compiled = tmp_path / "int8_edgetpu.tflite"
    shutil.copy(plain, compiled)
    with open(compiled, "ab") as handle:  # where edgetpu_compiler names its custom op
        handle.write(EDGETPU_OP)
    assert compiled_for_edgetpu(str(compiled))
    with pytest.raises(JobError) as refused:
        TFLITE.load(str(compiled), threads=1)
    assert refused.value.code == "delegate_unavailable"
    assert "libedgetpu.so.1" in refused.value.message and "Edge TPU" in refused.value.message
