"""The benchmark worker on a sentence encoder (token ids + attention mask), run as the agent runs it
(``python -m device_agent.bench.worker JOB RESULT``): health checks on the shipped eval inputs,
masks of ones when there are none, failures that name the input, bounded returned outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.taskmodels import encoder, sentences

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def encoder_tflite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import litert_torch

    module, examples, _info = encoder()
    path = tmp_path_factory.mktemp("encoder") / "encoder.tflite"
    litert_torch.convert(module, examples).export(str(path))
    return path


def _run_worker(tmp_path: Path, job: dict[str, Any]) -> dict[str, Any]:
    job_path, result_path = tmp_path / "job.json", tmp_path / "result.json"
    job_path.write_text(json.dumps(job))
    done = subprocess.run(
        [sys.executable, "-m", "device_agent.bench.worker", str(job_path), str(result_path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )  # fmt: skip
    assert result_path.is_file(), done.stderr[-2000:]
    return json.loads(result_path.read_text())


def _eval_file(path: Path, arrays: dict[str, np.ndarray]) -> Path:
    np.savez(path, x0=arrays["x0"], x1=arrays["x1"], ref=np.zeros((len(arrays["x0"]), 24)))
    return path


def _health_job(model: Path, eval_path: Path | None) -> dict[str, Any]:
    return {
        "mode": "health", "job_id": "h1", "model_path": str(model), "model_format": "tflite",
        "model_sha256": "0" * 64, "eval_path": str(eval_path) if eval_path else None,
        "health_runs": 3, "task": "embedding",
    }  # fmt: skip


def test_without_eval_data_the_health_check_feeds_a_mask_of_ones_and_passes(
    encoder_tflite: Path, tmp_path: Path
) -> None:
    outcome = _run_worker(tmp_path, _health_job(encoder_tflite, None))
    assert outcome["ok"], outcome
    report = outcome["result"]
    assert report["passed"] and report["checks"]["finite_outputs"], report["detail"]


def test_the_health_check_runs_the_shipped_inputs_and_names_the_one_that_gave_nan(
    encoder_tflite: Path, tmp_path: Path
) -> None:
    arrays = sentences(n=8)
    good = _run_worker(
        tmp_path, _health_job(encoder_tflite, _eval_file(tmp_path / "ok.npz", arrays))
    )
    assert good["ok"] and good["result"]["passed"], good
    arrays["x1"][5] = 0  # an empty sentence: 0/0 in the mean over its tokens
    outcome = _run_worker(
        tmp_path, _health_job(encoder_tflite, _eval_file(tmp_path / "empty.npz", arrays))
    )
    report = outcome["result"]
    assert not report["passed"] and report["checks"]["finite_outputs"] is False
    detail = report["detail"]
    assert "1 of 8 runs produced NaN" in detail
    assert "eval sample 5" in detail and "x1 int32[1, 12] all 0" in detail
    assert "values NaN" in detail


def test_returned_outputs_past_their_bound_are_refused_with_what_would_fit(
    encoder_tflite: Path, tmp_path: Path
) -> None:
    eval_path = _eval_file(tmp_path / "eval.npz", sentences(n=40))
    job = {
        "job_id": "b1", "model_path": str(encoder_tflite), "model_format": "tflite",
        "model_sha256": "0" * 64, "eval_path": str(eval_path), "task": "embedding",
        "warmup_runs": 1, "warmup_s": 0.0, "runs": 2, "min_s": 0.0,
        "outputs_path": str(tmp_path / "outputs.npz"), "max_outputs_bytes": 1000,
    }  # fmt: skip
    outcome = _run_worker(tmp_path, job)
    assert not outcome["ok"]
    assert outcome["error"]["code"] == "outputs_too_large"
    # 24 float32 values per sample: 96 bytes, so 10 samples fit in 1,000 bytes.
    assert "ship at most 10 samples" in outcome["error"]["message"]
    assert not (tmp_path / "outputs.npz").exists()

    job["max_outputs_bytes"] = 1 << 20
    outcome = _run_worker(tmp_path, job)
    assert outcome["ok"], outcome
    with np.load(tmp_path / "outputs.npz", allow_pickle=False) as data:
        assert data.files == ["out0"] and data["out0"].shape == (40, 24)
    assert outcome["result"]["metric"] == "cosine" and outcome["result"]["eval_samples"] == 40
