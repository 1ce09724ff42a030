"""A real agent in a board-like environment -- tflite-runtime 2.14 with numpy<2, no torch, no
ai-edge-litert -- benchmarks the host's fp32 and full-int8 exports with the accuracy the host measured.

`make test` builds that environment in .venv-board and passes its Python as EDGETAILOR_BOARD_PYTHON.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from host.commands.bench import benchmark
from host.data import load_data, write_eval_npz
from host.export import ExportConfig, export
from host.fleet import Fleet
from host.models import load_model
from host.train import fit
from tests.agents import AgentProcess

pytestmark = pytest.mark.slow

BOARD_PYTHON = os.environ.get("EDGETAILOR_BOARD_PYTHON", "")


@pytest.mark.skipif(
    not BOARD_PYTHON,
    reason="set EDGETAILOR_BOARD_PYTHON to a Python with tflite-runtime==2.14.0 and numpy<2, "
    "paho-mqtt, psutil, msgspec (`make test` builds one in .venv-board)",
)
def test_an_agent_on_tflite_runtime_2_14_without_torch_measures_the_hosts_accuracy(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    for absent in ("torch", "ai_edge_litert"):
        probe = subprocess.run([BOARD_PYTHON, "-c", f"import {absent}"], capture_output=True)
        assert probe.returncode != 0, f"the board environment must not have {absent}"

    data = load_data("builtin:digits")
    bundle = load_model("builtin:digits_cnn")
    fit(bundle.module, data, epochs=6, lr=3e-3)
    artifacts = [
        export(bundle, None, ExportConfig("tflite", precision), tmp_path / "out",
               calibration=data.train, task=bundle.task, evaluate_on=data.test)
        for precision in ("fp32", "int8")
    ]  # fmt: skip
    eval_npz = write_eval_npz(data.test, tmp_path / "eval.npz")

    agent = AgentProcess(
        shared_broker_url, "board-tfl214", tmp_path / "agent", base_topic, python=BOARD_PYTHON
    )
    agent.start()
    try:
        agent.wait_online(timeout=60)
        with Fleet(
            shared_broker_url, base_topic, store=f"sqlite:///{tmp_path / 'host.db'}"
        ) as fleet:
            record = fleet.wait_for_device("board-tfl214", timeout=30)
            assert record.birth is not None
            runtimes = {r.module: r.version for r in record.birth.runtimes}
            assert runtimes.get("tflite_runtime") == "2.14.0", runtimes
            assert "ai_edge_litert" not in runtimes
            for artifact in artifacts:
                result = benchmark(
                    fleet, "board-tfl214", artifact.path, model_manifest=artifact.manifest,
                    eval_path=eval_npz, runs=5, min_s=0.1, timeout=120,
                )  # fmt: skip
                assert result.runtime.startswith("tflite_runtime 2.14"), result.runtime
                host_accuracy = artifact.manifest.metrics["host_metric_value"]
                assert result.accuracy == pytest.approx(host_accuracy, abs=1e-9), (
                    artifact.manifest.precision
                )
                assert result.eval_samples == len(data.test)
    finally:
        agent.terminate()
