"""shared.scoring: one set of numpy-only quality scores, the same on the host and on a board."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from shared import scoring

REPO = Path(__file__).resolve().parents[2]
BOARD_PYTHON = os.environ.get("EDGETAILOR_BOARD_PYTHON", "")


def test_each_task_has_its_metric() -> None:
    assert scoring.metric_for("classification", True) == "accuracy"
    assert scoring.metric_for("classification", False) == "agreement"
    assert scoring.metric_for("embedding", False) == "cosine"
    assert scoring.metric_for("embedding", True) == "cosine"
    assert scoring.metric_for("regression", False) == "r2"
    with pytest.raises(scoring.ScoringError, match="unknown task 'ranking'"):
        scoring.metric_for("ranking", True)


def test_wilson_interval_matches_the_textbook_values() -> None:
    # 8 of 10: Wilson 95% interval [0.490, 0.943] (Agresti & Coull's table).
    low, high = scoring.wilson_interval(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    # All right: the interval still admits errors, and it narrows with the sample count.
    low_small, high_small = scoring.wilson_interval(16, 16)
    low_large, _ = scoring.wilson_interval(1000, 1000)
    assert high_small == 1.0 and low_small < 0.83 and low_large > 0.99


def test_accuracy_and_agreement_carry_a_wilson_interval_and_per_sample_scores() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    acc = scoring.score(outputs, np.array([1, 0, 0, 0]), None, "classification")
    assert (acc.name, acc.value, acc.samples, acc.method) == ("accuracy", 0.75, 4, "wilson")
    assert acc.interval == pytest.approx(scoring.wilson_interval(3, 4))
    assert acc.per_sample == [1.0, 1.0, 0.0, 1.0]
    agree = scoring.score(
        outputs, None, np.array([[0, 1.0], [0, 1.0], [0, 1.0], [1.0, 0]]), "classification"
    )
    assert agree.name == "agreement" and agree.value == 0.75


def test_cosine_is_scale_free_and_its_bootstrap_interval_brackets_it() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(200, 16))
    same = scoring.score(reference * 3, None, reference, "embedding")
    assert same.value == pytest.approx(1.0) and same.interval == pytest.approx((1.0, 1.0))
    noisy = scoring.score(
        reference + 0.5 * rng.normal(size=reference.shape), None, reference, "embedding"
    )
    assert noisy.name == "cosine" and noisy.method == "bootstrap"
    assert noisy.low < noisy.value < noisy.high < 1.0


def test_r2_is_one_for_identical_outputs_and_near_zero_for_a_constant_guess() -> None:
    rng = np.random.default_rng(1)
    reference = rng.normal(size=(300, 1))
    assert scoring.score(reference, None, reference, "regression").value == pytest.approx(1.0)
    constant = np.full_like(reference, reference.mean())
    guess = scoring.score(constant, None, reference, "regression")
    assert guess.name == "r2" and guess.value == pytest.approx(0.0, abs=1e-9)
    close = scoring.score(
        reference + 0.1 * rng.normal(size=reference.shape), None, reference, "regression"
    )
    assert close.low <= close.value <= close.high and 0.95 < close.value < 1.0


def test_a_paired_drop_interval_is_narrower_than_the_two_intervals_side_by_side() -> None:
    rng = np.random.default_rng(2)
    baseline = (rng.random(270) < 0.97).astype(float)
    candidate = baseline.copy()
    candidate[:3] = 0.0  # three samples flip, the rest agree
    low, high = scoring.paired_drop_interval(baseline, candidate)
    base_lo, base_hi = scoring.wilson_interval(baseline.sum(), 270)
    cand_lo, cand_hi = scoring.wilson_interval(candidate.sum(), 270)
    assert 0 <= low <= (baseline.mean() - candidate.mean()) <= high
    assert high - low < ((base_hi - cand_lo) - (base_lo - cand_hi)) / 2


def test_mismatched_outputs_are_a_scoring_error_that_says_what_differs() -> None:
    with pytest.raises(scoring.ScoringError, match="no labels and no reference"):
        scoring.score(np.zeros((2, 3)), None, None, "classification")
    with pytest.raises(scoring.ScoringError, match="3 outputs but 2 labels"):
        scoring.score(np.zeros((3, 2)), np.zeros(2, np.int64), None, "classification")
    with pytest.raises(scoring.ScoringError, match="differ in shape"):
        scoring.score(np.zeros((3, 4)), None, np.zeros((3, 5)), "embedding")


def test_eval_warnings_name_a_small_set_a_constant_top1_and_outputs_near_zero() -> None:
    assert scoring.eval_warnings(500, np.arange(500) % 10, None, "classification") == []
    small = scoring.eval_warnings(16, None, np.eye(16), "classification")
    assert len(small) == 1 and "16 samples (fewer than 100)" in small[0]
    constant = np.tile([0.1, 0.9, 0.0], (200, 1)) + np.linspace(0, 0.01, 200)[:, None]
    (top1,) = scoring.eval_warnings(200, None, constant, "classification")
    assert "top-1 is 1 for every eval sample" in top1 and "--task" in top1
    (zero,) = scoring.eval_warnings(200, None, np.full((200, 384), 1e-9), "embedding")
    assert "near zero" in zero and "cosine" in zero
    (labels,) = scoring.eval_warnings(200, np.zeros(200, np.int64), None, "classification")
    assert "every eval label is 0" in labels
    # Scored on labels, a model that predicts one class everywhere is flagged too.
    labelled = np.arange(200) % 10
    (stuck,) = scoring.eval_warnings(200, labelled, None, "classification", constant)
    assert "predicts class 1 for every eval sample" in stuck and "--pretrain-epochs" in stuck
    varied = np.eye(10)[labelled]
    assert scoring.eval_warnings(200, labelled, None, "classification", varied) == []


_BOARD_SCRIPT = """
import json, sys
import numpy as np
from shared import scoring
data = np.load(sys.argv[1], allow_pickle=False)
out = {}
for task, labels, ref in (("classification", data["y"], None), ("classification", None, data["ref"]),
                          ("embedding", None, data["emb_ref"]), ("regression", None, data["reg_ref"])):
    outputs = data["emb"] if task == "embedding" else data["reg"] if task == "regression" else data["cls"]
    s = scoring.score(outputs, labels, ref, task)
    out[s.name] = [s.value, s.low, s.high, np.__version__]
print(json.dumps(out))
"""


@pytest.mark.skipif(not BOARD_PYTHON, reason="needs EDGETAILOR_BOARD_PYTHON (numpy<2)")
def test_a_board_with_numpy_1_scores_exactly_what_the_host_scores(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arrays = {
        "cls": rng.normal(size=(150, 10)).astype(np.float32),
        "y": rng.integers(0, 10, 150),
        "ref": rng.normal(size=(150, 10)).astype(np.float32),
        "emb": rng.normal(size=(150, 32)).astype(np.float32),
        "reg": rng.normal(size=(150, 2)).astype(np.float32),
    }
    arrays["emb_ref"] = arrays["emb"] + 0.3 * rng.normal(size=(150, 32)).astype(np.float32)
    arrays["reg_ref"] = arrays["reg"] + 0.3 * rng.normal(size=(150, 2)).astype(np.float32)
    path = tmp_path / "scores.npz"
    np.savez(path, **arrays)
    done = subprocess.run(
        [BOARD_PYTHON, "-c", _BOARD_SCRIPT, str(path)],
        capture_output=True, text=True, cwd=REPO, timeout=120,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    board = json.loads(done.stdout)
    assert board["accuracy"][3].startswith("1."), "the board environment must have numpy 1.x"
    host = {
        "accuracy": scoring.score(arrays["cls"], arrays["y"], None, "classification"),
        "agreement": scoring.score(arrays["cls"], None, arrays["ref"], "classification"),
        "cosine": scoring.score(arrays["emb"], None, arrays["emb_ref"], "embedding"),
        "r2": scoring.score(arrays["reg"], None, arrays["reg_ref"], "regression"),
    }
    for name, score in host.items():
        value, low, high, _version = board[name]
        assert value == pytest.approx(score.value, abs=1e-12), name
        assert (low, high) == pytest.approx(score.interval, abs=1e-9), name
