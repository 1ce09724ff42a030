"""Session fixtures for host tests: the real digits data and a digits CNN trained on it once."""

from __future__ import annotations

import copy

import pytest
import torch

from host.data import DataSet, load_data
from host.models import ModelBundle, load_model
from host.train import fit

DIGITS_EPOCHS = 15

# Tiny models on a shared 2-core machine: one intra-op thread trains ~2x faster than two fighting
# for the cores with other processes.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits() -> DataSet:
    """scikit-learn's handwritten digits, split 70/15/15 with seed 0."""
    return load_data("builtin:digits", seed=0)


@pytest.fixture(scope="session")
def _trained_digits_cnn(digits: DataSet) -> ModelBundle:
    bundle = load_model("builtin:digits_cnn")
    fit(bundle.module, digits, epochs=DIGITS_EPOCHS, lr=3e-3, seed=0)
    bundle.module.to("cpu").eval()
    return bundle


@pytest.fixture(scope="session")
def trained_digits_cnn(_trained_digits_cnn: ModelBundle) -> ModelBundle:
    """The trained digits CNN (~96% test accuracy). Do not modify it: deepcopy it first, or use
    ``digits_cnn_copy``."""
    return _trained_digits_cnn


@pytest.fixture
def digits_cnn_copy(_trained_digits_cnn: ModelBundle) -> ModelBundle:
    """A private deep copy of the trained digits CNN that a test may change freely."""
    return copy.deepcopy(_trained_digits_cnn)
