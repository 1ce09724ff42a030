"""Torch-side behaviour of each technique: what pruning, factorization and QAT really do to a model,
and how recipes are parsed, validated and round-tripped. No training or export here (fast)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torch import nn

from host.compress import (
    NAMED_RECIPES,
    SEARCH_SPACES,
    TECHNIQUES,
    ChannelPrune,
    FineTune,
    Fp16,
    Int8Full,
    LowRank,
    QuantAwareTraining,
    Recipe,
    UnstructuredPrune,
    apply_recipe,
    technique_from_dict,
)
from host.compress.handlers.lowrank import factorize_module
from host.compress.handlers.pruning import channel_prune, magnitude_prune, sparsity
from host.compress.handlers.quantization import prepare_qat
from host.compress.recipes import resolve_recipe
from host.data import DataSet, Split
from host.errors import CompressionError
from host.metrics import count_macs, count_params
from host.models import load_model
from shared.errors import ConfigError


def _layer_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("name", ["digits_cnn", "resnet8", "mobilenetv2", "ds_cnn"])
def test_channel_pruning_removes_channels_so_params_and_macs_drop_and_forward_still_runs(
    name: str,
) -> None:
    bundle = load_model(f"builtin:{name}")
    pruned = channel_prune(bundle.module, bundle.example_inputs, ChannelPrune(ratio=0.5))
    params_before, params_after = count_params(bundle.module), count_params(pruned)
    macs_before = count_macs(bundle.module, bundle.example_inputs)
    macs_after = count_macs(pruned, bundle.example_inputs)
    assert params_after < params_before / 2.5
    assert macs_after < macs_before / 2.5
    assert pruned(*bundle.example_inputs).shape == bundle.module(*bundle.example_inputs).shape
    # The input is never mutated.
    assert count_params(bundle.module) == params_before


def test_channel_pruning_keeps_the_classifier_width() -> None:
    bundle = load_model("builtin:digits_cnn")
    pruned = channel_prune(bundle.module, bundle.example_inputs, ChannelPrune(ratio=0.7))
    assert pruned.classifier.out_features == 10
    assert pruned.features[0].out_channels < bundle.module.features[0].out_channels


def test_unstructured_pruning_reaches_the_requested_sparsity_globally_and_per_layer() -> None:
    bundle = load_model("builtin:digits_cnn")
    for scope in ("global", "layer"):
        pruned = magnitude_prune(bundle.module, 0.6, scope)
        assert sparsity(pruned) == pytest.approx(0.6, abs=0.01)
        assert count_params(pruned) == count_params(bundle.module)
    assert sparsity(bundle.module) < 0.01
    per_layer = magnitude_prune(bundle.module, 0.6, "layer")
    for layer in per_layer.modules():
        if isinstance(layer, (nn.Linear, nn.Conv2d)):
            zero_fraction = float((layer.weight == 0).float().mean())
            assert zero_fraction == pytest.approx(0.6, abs=0.02)


def _tiny_dataset() -> DataSet:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 1, 8, 8)).astype("float32")
    y = rng.integers(0, 10, size=32).astype("int64")
    split = Split((x,), y)
    return DataSet("tiny", split, split, split)


def test_unstructured_step_log_says_the_dense_export_does_not_shrink() -> None:
    bundle = load_model("builtin:digits_cnn")
    _candidate, ctx = apply_recipe(bundle, _tiny_dataset(), Recipe.of(UnstructuredPrune(0.5)))
    (record,) = ctx.log
    assert record.details["sparsity"] == pytest.approx(0.5, abs=0.01)
    assert any("does not shrink the dense export" in note for note in record.notes)
    assert record.params_before == record.params_after


@pytest.mark.parametrize("method", ["svd", "tucker2"])
@pytest.mark.parametrize("ratio", [0.5, 0.25])
def test_lowrank_reduces_the_factorized_layers_params_by_the_requested_ratio(
    method: str, ratio: float
) -> None:
    bundle = load_model("builtin:resnet8")
    factored, done, _ = factorize_module(
        bundle.module, bundle.example_inputs, LowRank(method=method, ratio=ratio)
    )
    assert len(done) >= 5
    for layer in done:
        assert layer.params_after <= ratio * layer.params_before
        # Rank granularity costs a little; well above half the allowed budget is used.
        assert layer.params_after >= 0.6 * ratio * layer.params_before
    assert factored(*bundle.example_inputs).shape == (1, 10)
    assert count_params(factored) < count_params(bundle.module)


def test_svd_with_high_energy_reproduces_an_exactly_low_rank_linear_and_conv() -> None:
    torch.manual_seed(0)
    linear = nn.Linear(64, 48)
    linear.weight.data = torch.randn(48, 4) @ torch.randn(4, 64)
    conv = nn.Conv2d(16, 32, 3, padding=1)
    conv.weight.data = (torch.randn(32, 3) @ torch.randn(3, 16 * 9)).reshape(32, 16, 3, 3)
    model = nn.Sequential(
        conv, nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), linear, nn.Linear(48, 5)
    )
    example = (torch.randn(2, 16, 4, 4),)
    factored, done, _ = factorize_module(model, example, LowRank(energy=0.999))
    ranks = {layer.name: layer.ranks for layer in done}
    assert ranks["0"] == (3,) and ranks["4"] == (4,)
    torch.testing.assert_close(factored(*example), model(*example), rtol=1e-4, atol=1e-4)


def test_tucker2_replaces_a_conv_by_three_convs_with_ranks_on_both_channel_modes() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64 * 16, 10)
    )
    example = (torch.randn(1, 32, 4, 4),)
    factored, done, _ = factorize_module(model, example, LowRank(method="tucker2", ratio=0.3))
    (layer,) = done
    assert layer.kind == "conv-tucker2" and len(layer.ranks) == 2
    assert [type(m) for m in factored[0]] == [nn.Conv2d, nn.Conv2d, nn.Conv2d]
    assert factored(*example).shape == (1, 10)


def test_lowrank_names_the_factorizable_layers_when_asked_for_an_unknown_one() -> None:
    bundle = load_model("builtin:mlp")
    with pytest.raises(ConfigError, match="factorizable layers are"):
        factorize_module(bundle.module, bundle.example_inputs, LowRank(layers=("nope",)))


def test_lowrank_that_cannot_shrink_anything_is_a_compression_error() -> None:
    bundle = load_model("builtin:mlp")
    with pytest.raises(CompressionError, match="nothing to factorize"):
        apply_recipe(bundle, _tiny_dataset(), Recipe.of(LowRank(ratio=0.001)))


def test_qat_prepared_model_trains_in_batches_and_keeps_its_output_shape() -> None:
    bundle = load_model("builtin:resnet8")
    wrapped, quantizer, bn_left = prepare_qat(bundle.module, bundle.example_inputs)
    assert not bn_left
    wrapped.train()
    optimizer = torch.optim.SGD(wrapped.parameters(), lr=0.01)
    before = [p.detach().clone() for p in wrapped.parameters()]
    loss = wrapped(torch.randn(16, 1, 8, 8)).square().mean()
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(a, b) for a, b in zip(before, wrapped.parameters(), strict=True))
    wrapped.eval()
    assert wrapped(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    assert quantizer.global_config.is_qat


# ------------------------------------------------------------------ configs and recipes


def test_every_named_recipe_round_trips_through_json() -> None:
    assert {"baseline", "int8", "prune50_ft_int8", "distill_half_int8", "lowrank_ft_fp16"} <= set(
        NAMED_RECIPES
    )
    for name, recipe in NAMED_RECIPES.items():
        again = Recipe.from_json(recipe.to_json())
        assert again == recipe, name


def test_every_technique_has_a_handler_and_a_default_config_that_round_trips() -> None:
    from host.compress import HANDLERS

    for name, cls in TECHNIQUES.items():
        assert name in HANDLERS
        cfg = cls()
        assert technique_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_a_step_without_optional_fields_takes_the_defaults() -> None:
    recipe = Recipe.from_obj([{"technique": "lowrank", "energy": 0.9}, {"technique": "fp16"}])
    assert recipe.steps == (LowRank(energy=0.9, ratio=None), Fp16())
    assert recipe.precision == "fp16"


@pytest.mark.parametrize(
    ("step", "message"),
    [
        ({"technique": "prune_magic"}, "unknown technique 'prune_magic'"),
        ({"technique": "prune_channels", "ratio": 1.0}, "prune_channels.ratio=1.0 is impossible"),
        ({"technique": "prune_unstructured", "amount": -0.1}, "amount=-0.1 is impossible"),
        ({"technique": "lowrank", "ratio": 1.5}, "lowrank.ratio=1.5 is impossible"),
        ({"technique": "lowrank", "ratio": 0.5, "energy": 0.9}, "exactly one of energy"),
        ({"technique": "finetune", "epochs": 2, "learning_rate": 0.1}, "no field(s) learning_rate"),
        ({"technique": "finetune", "epochs": "two"}, "Expected `int`"),
        ({"technique": "prune_channels", "importance": "taylor"}, "Invalid enum value 'taylor'"),
        ({"technique": "int8", "version": 7}, "version 7 is not supported"),
        ({"ratio": 0.5}, "lacks a 'technique' name"),
    ],
)
def test_bad_recipe_steps_are_config_errors_that_say_what_is_wrong(
    step: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Recipe.from_obj([step])


def test_bad_step_error_names_its_position_in_the_recipe() -> None:
    with pytest.raises(ConfigError, match="recipe step 2"):
        Recipe.from_json(json.dumps([{"technique": "finetune"}, {"technique": "nope"}]))


def test_recipe_that_sets_precision_twice_or_trains_after_qat_is_rejected() -> None:
    with pytest.raises(ConfigError, match="precision more than once"):
        Recipe.of(Fp16(), Int8Full())
    with pytest.raises(ConfigError, match="qat must be the last"):
        Recipe.of(QuantAwareTraining(), FineTune())


def test_unknown_recipe_name_lists_the_named_ones(tmp_path) -> None:
    with pytest.raises(ConfigError, match="prune50_ft_int8"):
        resolve_recipe("prune_everything")
    path = tmp_path / "mine.json"
    path.write_text(Recipe.of(ChannelPrune(0.3), FineTune(epochs=1)).to_json())
    assert resolve_recipe(str(path)).steps == (ChannelPrune(0.3), FineTune(epochs=1))
    with pytest.raises(ConfigError, match="does not exist"):
        resolve_recipe(str(tmp_path / "missing.json"))


def test_search_spaces_expand_into_distinct_valid_recipes() -> None:
    for name, space in SEARCH_SPACES.items():
        recipes = space.expand()
        assert len(recipes) == len(space), name
        assert len({r.name for r in recipes}) == len(recipes), name
        assert len({r.to_json() for r in recipes}) == len(recipes), name
    precisions = {r.precision for r in SEARCH_SPACES.get("quantize").expand()}
    assert precisions == {"fp32", "fp16", "int8_dynamic", "int8"}


def test_prune50_ft_without_labels_recovers_within_two_points_of_its_teacher(
    tmp_path_factory: pytest.TempPathFactory, digits: DataSet, trained_digits_cnn
) -> None:
    from host.compress import compress

    unlabelled = DataSet(
        "digits", Split(digits.train.inputs), Split(digits.val.inputs), digits.test
    )
    baseline = compress(trained_digits_cnn, unlabelled, "baseline", tmp_path_factory.mktemp("b"))
    pruned = compress(trained_digits_cnn, unlabelled, "prune50_ft", tmp_path_factory.mktemp("p"))
    before = baseline.artifact_metrics[0]["metric_value"]
    after = pruned.artifact_metrics[0]["metric_value"]
    assert pruned.artifact_metrics[0]["metric"] == "accuracy"
    assert count_params(pruned.bundle.module) < 0.5 * count_params(trained_digits_cnn.module)
    assert after >= before - 0.02
    notes = " ".join(n for step in pruned.steps for n in step.notes)
    assert "no labels" in notes and "15 epoch(s)" in notes
