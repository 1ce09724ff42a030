"""Metrics: accuracy, agreement and cosine fidelity, parameter and MAC counts, and training."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from host.data import DataSet
from host.errors import CompressionError, DataError
from host.metrics import (
    count_macs,
    count_params,
    evaluate_module,
    pick_metric,
    predict,
    relative_error,
    score_outputs,
)
from host.models import ModelBundle, load_model
from host.train import fit, train_device


def test_metric_choice_follows_task_and_labels() -> None:
    assert pick_metric("classification", True) == "accuracy"
    assert pick_metric("classification", False) == "agreement"
    assert pick_metric("embedding", False) == "cosine"
    assert pick_metric("regression", True) == "r2"
    with pytest.raises(DataError, match="unknown task"):
        pick_metric("ranking", True)


def test_accuracy_counts_top1_hits() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    result = score_outputs(outputs, np.array([1, 0, 0, 0]), None, "classification")
    assert result.name == "accuracy" and result.value == pytest.approx(0.75)


def test_agreement_compares_top1_with_the_reference_when_there_are_no_labels() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2]])
    reference = np.array([[0.0, 1.0], [0.0, 1.0]])
    result = score_outputs(outputs, None, reference, "classification")
    assert result.name == "agreement" and result.value == pytest.approx(0.5)


def test_cosine_fidelity_is_one_for_scaled_outputs_and_lower_for_noise() -> None:
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(20, 8)).astype(np.float32)
    assert score_outputs(reference * 3, None, reference, "embedding").value == pytest.approx(
        1.0, abs=1e-6
    )
    noisy = score_outputs(
        reference + rng.normal(size=reference.shape), None, reference, "embedding"
    )
    assert noisy.name == "cosine" and noisy.value < 0.9
    assert relative_error(reference, reference) == 0.0


def test_scoring_without_labels_or_reference_says_what_is_missing() -> None:
    with pytest.raises(DataError, match="no labels and no reference"):
        score_outputs(np.zeros((2, 3)), None, None, "classification")
    with pytest.raises(DataError, match="3 outputs but 2 labels"):
        score_outputs(np.zeros((3, 2)), np.zeros(2, np.int64), None, "classification")


def test_params_and_macs_of_a_linear_layer_are_exact() -> None:
    layer = nn.Linear(10, 4)
    assert count_params(layer) == 44
    assert count_macs(layer, (torch.randn(1, 10),)) == 40


def test_macs_of_a_convolution_are_exact() -> None:
    conv = nn.Conv2d(2, 3, 3, padding=1, bias=False)
    assert count_macs(conv, (torch.randn(1, 2, 8, 8),)) == 3 * 8 * 8 * 2 * 9


def test_trained_digits_cnn_scores_high_and_untrained_scores_low(
    digits: DataSet, trained_digits_cnn: ModelBundle
) -> None:
    trained = evaluate_module(trained_digits_cnn.module, digits.test, "classification")
    untrained = evaluate_module(
        load_model("builtin:digits_cnn").module, digits.test, "classification"
    )
    assert trained.name == "accuracy" and trained.value >= 0.93
    assert untrained.value < 0.3


def test_a_model_agrees_fully_with_its_own_outputs(
    digits: DataSet, trained_digits_cnn: ModelBundle
) -> None:
    reference = predict(trained_digits_cnn.module, digits.test)
    result = evaluate_module(trained_digits_cnn.module, digits.test, "classification", reference)
    # Labels take precedence: agreement is only for unlabelled data.
    assert result.name == "accuracy"
    unlabelled = type(digits.test)(digits.test.inputs, None)
    assert (
        evaluate_module(trained_digits_cnn.module, unlabelled, "classification", reference).value
        == 1.0
    )


def test_training_uses_cuda_when_present_else_cpu() -> None:
    assert train_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_distillation_without_labels_moves_the_student_towards_the_teacher(
    digits: DataSet, trained_digits_cnn: ModelBundle
) -> None:
    teacher = copy.deepcopy(trained_digits_cnn.module)
    unlabelled = DataSet(
        "digits-unlabelled", type(digits.train)(digits.train.inputs, None), digits.val, digits.test
    )
    student = load_model("builtin:digits_cnn", width=0.5).module
    reference = predict(teacher, digits.test)
    test = type(digits.test)(digits.test.inputs, None)
    before = evaluate_module(student, test, "classification", reference).value
    fit(student, unlabelled, epochs=8, lr=3e-3, teacher=teacher)
    after = evaluate_module(student.cpu(), test, "classification", reference).value
    assert before < 0.3 and after > 0.75


def test_training_without_labels_or_teacher_is_refused(digits: DataSet) -> None:
    unlabelled = DataSet(
        "u", type(digits.train)(digits.train.inputs, None), digits.val, digits.test
    )
    with pytest.raises(CompressionError, match="needs a teacher"):
        fit(load_model("builtin:mlp").module, unlabelled, epochs=1, lr=1e-3)
    with pytest.raises(CompressionError, match="alpha"):
        fit(load_model("builtin:mlp").module, digits, epochs=1, lr=1e-3, alpha=1.5)
