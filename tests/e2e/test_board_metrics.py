"""A real agent in the board-like environment (tflite-runtime 2.14, numpy<2, no torch) reports,
for each task, the metric the host measured on the same file; and the raw outputs it sends back
score a user's metric on the host to the value the host's own run of the file gave."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from host.commands.bench import benchmark
from host.compress import compress
from host.data import load_data
from host.fleet import Fleet
from host.metrics import load_metric, score_user_metric, user_outputs
from host.models import load_model
from host.train import fit
from tests.agents import AgentProcess

pytestmark = pytest.mark.slow

BOARD_PYTHON = os.environ.get("EDGETAILOR_BOARD_PYTHON", "")


@pytest.mark.skipif(not BOARD_PYTHON, reason="needs EDGETAILOR_BOARD_PYTHON (`make test` sets it)")
def test_board_and_host_score_each_task_alike_and_user_metrics_come_from_returned_outputs(
    shared_broker_url: str, base_topic: str, tmp_path: Path
) -> None:
    digits = load_data("builtin:digits")
    classifier = load_model("builtin:digits_cnn?width=0.5")
    fit(classifier.module, digits, epochs=3, lr=3e-3)
    classifier.module.cpu().eval()
    cases = {
        # name: (bundle, data, user metric or None)
        "classification": (classifier, digits, "tests.taskmodels:top2_accuracy"),
        "embedding": (
            load_model("tests.taskmodels:encoder"),
            load_data("tests.taskmodels:sentences"),
            "tests.taskmodels:negative_distance",
        ),
        "regression": (
            load_model("tests.taskmodels:regressor"),
            load_data("tests.taskmodels:regression_data"),
            None,
        ),
    }
    made = {
        task: compress(bundle, data, "baseline", tmp_path / task, metric=metric)
        for task, (bundle, data, metric) in cases.items()
    }

    agent = AgentProcess(
        shared_broker_url, "board-metrics", tmp_path / "agent", base_topic, python=BOARD_PYTHON
    )
    agent.start()
    try:
        agent.wait_online(timeout=60)
        with Fleet(
            shared_broker_url, base_topic, store=f"sqlite:///{tmp_path / 'host.db'}",
            outputs_dir=tmp_path / "outputs",
        ) as fleet:  # fmt: skip
            fleet.wait_for_device("board-metrics", timeout=30)
            for task, result in made.items():
                (artifact,) = result.artifacts
                host = artifact.manifest.metrics
                metric_spec = cases[task][2]
                board = benchmark(
                    fleet, "board-metrics", artifact.path, model_manifest=artifact.manifest,
                    eval_path=tmp_path / task / "eval.npz", runs=3, min_s=0.05,
                    return_outputs=metric_spec is not None, timeout=180,
                )  # fmt: skip
                assert board.runtime.startswith("tflite_runtime 2.14"), board.runtime
                assert board.task == task
                assert board.metric == host["host_metric"], task
                assert board.metric_value == pytest.approx(host["host_metric_value"], abs=1e-3)
                assert board.eval_samples == host["eval_samples"] == result.eval_samples
                low, high = board.metric_interval or (None, None)
                assert low is not None and low <= board.metric_value <= high
                host_warnings = result.eval_warnings
                assert len(board.eval_warnings) == len(host_warnings)
                for board_warning, host_warning in zip(board.eval_warnings, host_warnings):
                    assert host_warning.startswith(board_warning)
                if metric_spec is None:
                    assert board.outputs is None
                    continue
                assert board.outputs is not None and board.outputs.parts >= 1
                path = fleet.outputs.wait(board.job_id, board.outputs, timeout=60)
                assert path is not None
                with np.load(path, allow_pickle=False) as data:
                    outputs = user_outputs([data[name] for name in sorted(data.files)])
                split = cases[task][1].test
                reference = (
                    None
                    if split.labels is not None
                    else np.load(tmp_path / task / "eval.npz")["ref"]
                )
                scored = score_user_metric(
                    load_metric(metric_spec), outputs, split.labels, reference
                )
                assert scored.name == host["user_metric"]
                assert scored.value == pytest.approx(host["user_metric_value"], abs=1e-3)
    finally:
        agent.terminate()
