"""Runtime probing in a short-lived process: only what loads is listed in the birth message."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from device_agent.probe import probe_delegates, tiny_onnx_model

BOARD_PYTHON = os.environ.get("EDGETAILOR_BOARD_PYTHON")


def test_the_tiny_in_memory_onnx_model_runs_on_onnx_runtime() -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(tiny_onnx_model(), providers=["CPUExecutionProvider"])
    (out,) = session.run(None, {"x": np.array([2.5], dtype=np.float32)})
    assert out.tolist() == [2.5]


def test_probe_lists_xnnpack_and_the_onnx_cpu_provider_that_load_and_no_gpu_delegate_here() -> None:
    found = probe_delegates()
    assert found is not None
    assert "xnnpack" in found and "onnx:CPUExecutionProvider" in found
    assert "onnx:AzureExecutionProvider" not in found  # runs nothing on the board
    assert "gpu" not in found and "edgetpu" not in found  # no such library loads on this machine


@pytest.mark.skipif(not BOARD_PYTHON, reason="needs EDGETAILOR_BOARD_PYTHON (the board-like venv)")
def test_probe_on_a_board_with_tflite_runtime_only_lists_xnnpack_and_no_onnx_provider() -> None:
    assert probe_delegates(str(BOARD_PYTHON)) == ["xnnpack"]


def test_probe_that_cannot_run_returns_none_so_the_agent_falls_back_to_library_files() -> None:
    assert probe_delegates("/nonexistent/python") is None


def test_cuda_execution_provider_loads_on_a_gpu_board() -> None:
    import onnxruntime as ort

    if shutil.which("nvidia-smi") is None or (
        "CUDAExecutionProvider" not in ort.get_available_providers()
    ):
        pytest.skip(
            "no GPU present (no nvidia-smi or no CUDA execution provider): CUDA path not run"
        )
    found = probe_delegates()
    assert found is not None and "onnx:CUDAExecutionProvider" in found
