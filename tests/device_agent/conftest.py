"""Fixtures for agent tests: tiny real models (float and full-int8 TFLite), eval data, agents."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost

INPUT_SHAPE = (1, 1, 8, 8)
CLASSES = 10


def _tiny_cnn() -> object:
    import torch

    class TinyCnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 8, 3, padding=1)
            self.pool = torch.nn.AdaptiveAvgPool2d(2)
            self.fc = torch.nn.Linear(32, CLASSES)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))

    torch.manual_seed(0)
    return TinyCnn().eval()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tiny CNN as float and full-int8 .tflite (litert-torch) and as .onnx, plus eval data."""
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import (
        PT2EQuantizer,
        get_symmetric_quantization_config,
    )
    from litert_torch.quantize.quant_config import QuantConfig
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    out = tmp_path_factory.mktemp("models")
    model = _tiny_cnn()
    example = (torch.randn(*INPUT_SHAPE),)
    litert_torch.convert(model, example).export(str(out / "float.tflite"))

    quantizer = PT2EQuantizer().set_global(
        get_symmetric_quantization_config(is_per_channel=True, is_dynamic=False)
    )
    graph = prepare_pt2e(torch.export.export(model, example).module(), quantizer)
    rng = np.random.default_rng(1)
    calib = rng.standard_normal((32, *INPUT_SHAPE[1:])).astype(np.float32)
    for sample in calib:
        graph(torch.from_numpy(sample[None]))
    graph = convert_pt2e(graph, fold_quantize=False)
    litert_torch.convert(graph, example, quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(out / "int8.tflite")
    )

    torch.onnx.export(model, example, str(out / "float.onnx"), dynamo=False)

    x = rng.standard_normal((40, *INPUT_SHAPE[1:])).astype(np.float32)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x)).argmax(1).numpy()
    # Labels agree with the float model on 3 of 4 samples, so accuracy is neither 0 nor 1.
    labels = predicted.copy()
    labels[::4] = (labels[::4] + 1) % CLASSES
    np.savez(out / "eval.npz", x=x, y=labels.astype(np.int64))
    return out


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "agent"


@pytest.fixture
def device_id() -> str:
    return f"dev-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def minihost(shared_broker_url: str, base_topic: str) -> Iterator[MiniHost]:
    with MiniHost(shared_broker_url, base_topic) as host:
        yield host


@pytest.fixture
def start_agent(
    shared_broker_url: str, base_topic: str, device_id: str, data_dir: Path
) -> Iterator[Callable[..., AgentProcess]]:
    """Start an agent on the shared broker (waits until it is online); stopped after the test."""
    started: list[AgentProcess] = []

    def start(
        extra_args: list[str] | None = None, env: dict[str, str] | None = None
    ) -> AgentProcess:
        agent = AgentProcess(
            shared_broker_url, device_id, data_dir, base_topic, extra_args or [], env or {}
        )
        agent.start()
        started.append(agent)
        agent.wait_online()
        return agent

    yield start
    for agent in started:
        agent.terminate()
