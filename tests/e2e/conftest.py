"""End-to-end fixtures: a digits CNN trained and exported once per session, and agent processes.

The CNN trains on scikit-learn's 8x8 digits (fixed-seed split) in about a second and is exported
with litert_torch to .tflite; the eval .npz holds the held-out split as the model takes it
(x float32 NCHW, y int64), and ``torch_accuracy`` is the PyTorch model's accuracy on exactly that.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from tests.agents import AgentProcess

SEED = 0


@dataclass(frozen=True)
class DigitsArtifacts:
    tflite: Path
    eval_npz: Path
    torch_accuracy: float
    eval_samples: int


@dataclass(frozen=True)
class WideArtifacts:
    """A multi-MB model, for transfers long enough to kill a broker in the middle of."""

    tflite: Path
    size_bytes: int


def _digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    x_train, x_eval, y_train, y_eval = train_test_split(
        x, y, test_size=0.25, random_state=SEED, stratify=y
    )
    return x_train, x_eval, y_train, y_eval


@pytest.fixture(scope="session")
def digits_model(tmp_path_factory: pytest.TempPathFactory) -> DigitsArtifacts:
    import litert_torch
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    x_train, x_eval, y_train, y_eval = _digits_split()
    model = nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(32 * 4 * 4, 10),
    )  # fmt: skip
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    generator = torch.Generator().manual_seed(SEED)
    for _epoch in range(15):
        order = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), 64):
            batch = order[start : start + 64]
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(xt[batch]), yt[batch]).backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_eval)).argmax(dim=1).numpy()
    accuracy = float((predicted == y_eval).mean())

    out = tmp_path_factory.mktemp("digits")
    tflite = out / "digits_cnn.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(tflite))
    eval_npz = out / "digits_eval.npz"
    np.savez(eval_npz, x=x_eval, y=y_eval)
    return DigitsArtifacts(tflite, eval_npz, accuracy, len(y_eval))


@pytest.fixture(scope="session")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> WideArtifacts:
    import litert_torch
    import torch
    from torch import nn

    torch.manual_seed(SEED)
    # ~1.3 M float32 weights: a ~5 MB file, hundreds of chunks at 8 KiB.
    model = nn.Sequential(
        nn.Flatten(),
        nn.Linear(64, 4096),
        nn.ReLU(),
        nn.Linear(4096, 256),
        nn.ReLU(),
        nn.Linear(256, 10),
    ).eval()
    path = tmp_path_factory.mktemp("wide") / "wide_mlp.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return WideArtifacts(path, path.stat().st_size)


AgentFactory = Callable[..., AgentProcess]


@pytest.fixture
def start_agent(tmp_path: Path, base_topic: str) -> Iterator[AgentFactory]:
    """Start ``edgetailor-agent`` processes that the test may kill; all are stopped at the end."""
    started: list[AgentProcess] = []

    def start(
        device_id: str,
        broker_url: str,
        *,
        extra_args: list[str] | None = None,
        env: dict[str, str] | None = None,
        wait: bool = True,
    ) -> AgentProcess:
        agent = AgentProcess(
            broker_url, device_id, tmp_path / "agents" / device_id, base_topic,
            extra_args=["--telemetry-interval", "1", *(extra_args or [])], env=env,
        )  # fmt: skip
        agent.start()
        started.append(agent)
        if wait:
            agent.wait_online(timeout=60)
        return agent

    yield start
    for agent in started:
        agent.terminate(timeout=10)


def cli_env() -> dict[str, str]:
    """Environment for `edgetailor` subprocesses: this checkout first on the path."""
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1"}
