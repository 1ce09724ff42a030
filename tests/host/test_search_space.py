"""The search space: a model's layer groups, their sensitivity measured on the host, and how a
trial's parameters become a recipe that prunes the groups unevenly and keeps the most
int8-sensitive ones float."""

from __future__ import annotations

import optuna
import pytest

from host.compress import ChannelPrune, FineTune, Int8Full, LowRank
from host.data import DataSet
from host.models import ModelBundle, load_model
from host.search.layers import LayerGroup, layer_groups
from host.search.sensitivity import GroupSensitivity, measure_sensitivity
from host.search.space import DeviceSpace
from host.search.spec import SearchSpec


def test_layer_groups_follow_the_models_own_containers() -> None:
    cnn = layer_groups(load_model("builtin:digits_cnn").module)
    assert [g.modules for g in cnn] == [("features.0",), ("features.2",), ("features.5",)]
    resnet = layer_groups(load_model("builtin:resnet8").module)
    assert 2 <= len(resnet) <= 4
    names = [m for g in resnet for m in g.modules]
    assert len(names) == len(set(names))  # each module in one group, in order


def test_sensitivity_is_measured_per_group_on_the_host(
    trained_digits_cnn: ModelBundle, digits: DataSet
) -> None:
    groups = layer_groups(trained_digits_cnn.module)
    measured = measure_sensitivity(trained_digits_cnn, digits, groups)
    assert [s.group for s in measured] == groups
    for s in measured:
        assert s.prune_drop is not None and -0.05 <= s.prune_drop <= 1.0
        assert -0.05 <= s.int8_drop <= 1.0
    # Halving a convolution without recovery costs far more than int8 on this CNN.
    assert max(s.prune_drop for s in measured) > max(s.int8_drop for s in measured)
    assert GroupSensitivity.from_dict(measured[0].to_dict()) == measured[0]


def _space(**spec: object) -> DeviceSpace:
    sensitivity = [
        GroupSensitivity(LayerGroup("g0", ("features.0",), 160), prune_drop=0.30, int8_drop=0.001),
        GroupSensitivity(LayerGroup("g1", ("features.2",), 4640), prune_drop=0.05, int8_drop=0.040),
        GroupSensitivity(
            LayerGroup("g2", ("features.5",), 18496), prune_drop=0.00, int8_drop=0.010
        ),
    ]
    search = SearchSpec(
        model="builtin:digits_cnn", data="builtin:digits", devices=("pi-01",), **spec
    )
    return DeviceSpace.for_device(search, sensitivity, cores=4, formats={"tflite", "onnx"})


def test_a_trial_prunes_sensitive_groups_less_and_keeps_int8_sensitive_ones_float() -> None:
    space = _space(runtimes=("tflite", "onnx"), recovery_epochs=2)
    params = {"runtime": "tflite", "threads": 2, "precision": "int8_mixed", "prune": 0.4,
              "stage0": 1.0, "stage1": 1.0, "stage2": 1.0, "lowrank": "0.5", "float_groups": 1}  # fmt: skip
    plan = space.suggest(optuna.trial.FixedTrial(params))
    steps = plan.recipe.steps
    prune = next(s for s in steps if isinstance(s, ChannelPrune))
    ratios = dict(prune.layer_ratios)
    assert ratios["features.0"] < ratios["features.2"] < ratios["features.5"]
    assert any(isinstance(s, LowRank) and s.ratio == 0.5 for s in steps)
    assert any(isinstance(s, FineTune) and s.epochs == 2 for s in steps)
    assert steps[-1] == Int8Full(float_layers=("features.2",))  # the most int8-sensitive group
    assert (plan.format, plan.threads) == ("tflite", 2)
    same = space.suggest(optuna.trial.FixedTrial(params))
    assert same.variant == plan.variant
    other_threads = space.suggest(optuna.trial.FixedTrial({**params, "threads": 1}))
    assert other_threads.build_key == plan.build_key and other_threads.variant != plan.variant


def test_onnx_gets_full_int8_where_a_trial_asks_for_mixed_precision() -> None:
    space = _space(runtimes=("tflite", "onnx"), max_prune=0.0, lowrank=False)
    plan = space.suggest(optuna.trial.FixedTrial({"runtime": "onnx", "threads": 1, "precision": "int8_mixed",
                                                  "stage0": 0.0, "stage1": 0.0, "stage2": 0.0}))  # fmt: skip
    assert plan.recipe.steps == (Int8Full(),) and plan.format == "onnx"


@pytest.mark.parametrize(
    ("field", "value"), [("precisions", ("int4",)), ("runtimes", ("tvm",)), ("max_prune", 1.0)]
)
def test_an_impossible_space_is_refused_naming_the_option(field: str, value: object) -> None:
    from shared.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace("_", "[-_]")):
        _space(**{field: value})


def test_a_mac_heavy_insensitive_group_is_pruned_before_a_mac_light_one() -> None:
    sensitivity = [
        # As a CNN's early, high-resolution convolutions and its late, wide ones: the first
        # holds most MACs and few parameters; pruning hurts neither.
        GroupSensitivity(LayerGroup("g0", ("features.0",), 160, macs=900_000), 0.0, 0.01),
        GroupSensitivity(LayerGroup("g1", ("features.2",), 18496, macs=60_000), 0.0, 0.01),
        # MAC-heavy too, but pruning it costs the metric.
        GroupSensitivity(LayerGroup("g2", ("features.5",), 4640, macs=900_000), 0.20, 0.01),
    ]
    search = SearchSpec(model="builtin:digits_cnn", data="builtin:digits", devices=("pi-01",))
    space = DeviceSpace.for_device(search, sensitivity, cores=1, formats={"tflite"})
    heavy, light, sensitive = space.stage_weights()
    assert heavy > sensitive and heavy > light
    for prune in (0.1, 0.3):
        params = {"runtime": "tflite", "threads": 1, "precision": "fp32", "prune": prune,
                  "stage0": 1.0, "stage1": 1.0, "stage2": 1.0, "lowrank": "none"}  # fmt: skip
        plan = space.suggest(optuna.trial.FixedTrial(params))
        ratios = dict(
            next(s for s in plan.recipe.steps if isinstance(s, ChannelPrune)).layer_ratios
        )
        assert ratios["features.0"] > ratios["features.2"]
        assert ratios["features.0"] > ratios["features.5"]
    # Without MAC counts, sensitivity alone decides, as before.
    assert _space().stage_weights() == pytest.approx([0.5, 1.5 - 0.05 / 0.30, 1.5], abs=1e-3)
