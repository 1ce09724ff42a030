"""Model specs: builtin zoo, file.py:factory, pkg.module:factory, and clear errors for bad specs."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
import torch

from host.errors import ModelSpecError
from host.metrics import count_params
from host.models import MODELS, ModelBundle, load_model

BUILTINS = ("digits_cnn", "resnet8", "mobilenetv2", "ds_cnn", "mlp")

FACTORY_SOURCE = textwrap.dedent(
    """
    import torch
    from torch import nn

    def make(width: float = 1.0):
        hidden = int(16 * width)
        return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 3)), (
            torch.randn(1, 1, 8, 8),
        )

    def encoder():
        return nn.Linear(6, 4), (torch.randn(1, 6),), {"task": "embedding", "name": "enc"}

    def broken():
        return "not a model"
    """
)


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_runs_on_digits_shaped_input_and_gives_ten_scores(name: str) -> None:
    bundle = load_model(f"builtin:{name}")
    out = bundle.module(*bundle.example_inputs)
    assert out.shape == (1, 10)
    assert bundle.task == "classification"
    assert bundle.num_classes == 10
    assert bundle.factory == f"builtin:{name}"


@pytest.mark.parametrize("name", BUILTINS)
def test_half_width_builtin_has_fewer_parameters(name: str) -> None:
    full = count_params(load_model(f"builtin:{name}").module)
    half = load_model(f"builtin:{name}", width=0.5)
    assert count_params(half.module) < 0.6 * full
    assert half.width == 0.5


def test_builtin_accepts_another_input_shape_and_class_count() -> None:
    bundle = load_model("builtin:resnet8", input_shape=(3, 32, 32), num_classes=4)
    assert bundle.example_inputs[0].shape == (1, 3, 32, 32)
    assert bundle.module(*bundle.example_inputs).shape == (1, 4)


def test_the_registry_lists_all_five_builtins() -> None:
    load_model("builtin:mlp")
    assert set(BUILTINS) <= set(MODELS)


def test_file_factory_spec_loads_module_and_passes_width(tmp_path: Path) -> None:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_SOURCE)
    bundle = load_model(f"{path}:make", width=2.0)
    assert isinstance(bundle, ModelBundle)
    assert bundle.module[1].out_features == 32
    assert bundle.task == "classification" and bundle.num_classes == 3


def test_factory_info_dict_sets_task_and_name(tmp_path: Path) -> None:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_SOURCE)
    bundle = load_model(f"{path}:encoder")
    assert bundle.task == "embedding" and bundle.name == "enc"


def test_package_module_factory_spec_is_imported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "userpkg_models"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        bundle = load_model("userpkg_models.nets:make")
        assert bundle.module(*bundle.example_inputs).shape == (1, 3)
    finally:
        for mod in [m for m in sys.modules if m.startswith("userpkg_models")]:
            del sys.modules[mod]


def test_unknown_builtin_is_rejected_with_the_known_names() -> None:
    with pytest.raises(ModelSpecError, match=r"unknown builtin model 'resnet9'.*builtin:resnet8"):
        load_model("builtin:resnet9")


def test_spec_without_factory_part_says_how_to_write_it() -> None:
    with pytest.raises(ModelSpecError, match="path/file.py:factory"):
        load_model("just_a_name")


def test_missing_file_and_missing_module_are_named(tmp_path: Path) -> None:
    with pytest.raises(ModelSpecError, match="does not exist"):
        load_model(f"{tmp_path}/nope.py:make")
    with pytest.raises(ModelSpecError, match="cannot import module 'no_such_pkg_xyz.models'"):
        load_model("no_such_pkg_xyz.models:make")


def test_missing_attribute_and_wrong_return_are_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "my_models.py"
    path.write_text(FACTORY_SOURCE)
    with pytest.raises(ModelSpecError, match="no callable 'absent'"):
        load_model(f"{path}:absent")
    with pytest.raises(ModelSpecError, match="returned str"):
        load_model(f"{path}:broken")


def test_impossible_width_is_rejected() -> None:
    with pytest.raises(ModelSpecError, match="width must be > 0"):
        load_model("builtin:digits_cnn", width=0.0)


def test_loaded_models_are_in_eval_mode() -> None:
    bundle = load_model("builtin:resnet8")
    assert not bundle.module.training
    with torch.no_grad():
        a = bundle.module(*bundle.example_inputs)
        b = bundle.module(*bundle.example_inputs)
    assert torch.equal(a, b)


def test_spec_parameters_set_factory_arguments_and_the_bundle_remembers_them() -> None:
    wide = load_model("builtin:digits_cnn?width=2&num_classes=4")
    assert (wide.width, wide.num_classes) == (2.0, 4)
    assert wide.module(*wide.example_inputs).shape == (1, 4)
    assert count_params(wide.module) > count_params(load_model("builtin:digits_cnn").module)
    again = load_model(wide.factory)
    assert count_params(again.module) == count_params(wide.module)
    # Explicit keyword arguments win over the spec's own, as a distillation student needs.
    assert load_model(wide.factory, width=0.5).width == 0.5


def test_builtin_initial_weights_do_not_depend_on_the_global_random_state() -> None:
    torch.manual_seed(1)
    first = load_model("builtin:resnet8").module.state_dict()
    torch.randn(100)  # consume global RNG state, as imports and other code do
    second = load_model("builtin:resnet8").module.state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("builtin:digits_cnn?depth=3", "takes no depth; it takes width, num_classes, input_shape"),
        ("builtin:digits_cnn?width", "is not KEY=VALUE"),
        ("builtin:digits_cnn?width=-1", "width"),
    ],
)
def test_bad_spec_parameters_are_clear_errors(spec: str, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        load_model(spec)


TORCHVISION_STYLE = textwrap.dedent(
    """
    from torch import nn

    def resnet_like(*, weights=None, progress=True, num_classes=1000, **kwargs):
        # The signature of torchvision.models.resnet18: returns a bare module.
        return nn.Sequential(
            nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
            nn.Linear(8, num_classes),
        )

    def create_model(model_name, pretrained=False, **kwargs):
        # timm.create_model passes unknown keywords to the model class, which would refuse them.
        if set(kwargs) - {"num_classes"}:
            raise TypeError(f"unexpected {sorted(kwargs)}")
        return resnet_like(num_classes=kwargs.get("num_classes", 1000))
    """
)


def test_torchvision_and_timm_style_factories_returning_a_bare_module_load_unchanged(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vision_zoo.py"
    path.write_text(TORCHVISION_STYLE)
    bundle = load_model(f"{path}:resnet_like?num_classes=10&input_shape=[3,32,32]")
    assert bundle.example_inputs[0].shape == (1, 3, 32, 32)
    assert bundle.task == "classification" and bundle.num_classes == 10
    timm_like = load_model(
        f"{path}:create_model?model_name=resnet18&num_classes=4&input_shape=[3,16,16]"
    )
    assert timm_like.module(*timm_like.example_inputs).shape == (1, 4)


def test_a_bare_module_without_input_shape_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "vision_zoo.py"
    path.write_text(TORCHVISION_STYLE)
    with pytest.raises(ModelSpecError, match=r"input_shape=\[3,224,224\]"):
        load_model(f"{path}:resnet_like")
