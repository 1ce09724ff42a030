"""Classes of models users bring beyond image classifiers and encoders: recurrent nets (GRU, LSTM,
bidirectional, stacked), nets with several outputs, regressors with real-valued targets, modern
conv blocks (transformers' ConvNeXt), and factories that return transformers output objects. Each
class on a small model of it: export at every precision, structured pruning, low-rank,
distillation, and the data and metrics around it."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from host.compress import (
    ChannelPrune,
    Distill,
    FineTune,
    LowRank,
    Recipe,
    compress,
)
from host.compress.api import prepare_baseline
from host.compress.handlers.base import head_modules
from host.compress.handlers.lowrank import factorize_module
from host.compress.handlers.pruning import structured_prune
from host.data import DataSet, Split, load_data
from host.errors import DataError, ExportError, ModelSpecError
from host.export import ExportConfig, export, run_artifact_all
from host.export.canonical import flatten_linear_inputs, fold_layer_scales
from host.metrics import count_macs, count_params, predict
from host.models import ModelBundle, load_model
from host.models.recurrent import LinearRecurrent, linearize_recurrent
from tests.taskmodels import SequenceClassifier, TwoHeadNet

# ---------------------------------------------------------------- recurrent layers

RECURRENT = [
    pytest.param("GRU", 1, False, id="gru"),
    pytest.param("LSTM", 1, False, id="lstm"),
    pytest.param("LSTM", 2, True, id="lstm-stacked-bidirectional"),
    pytest.param("GRU", 2, True, id="gru-stacked-bidirectional"),
    pytest.param("RNN", 1, False, id="rnn"),
]


def _sequence_bundle(kind: str, layers: int, bidirectional: bool, **kw: object) -> ModelBundle:
    torch.manual_seed(0)
    model = SequenceClassifier(kind, hidden=24, layers=layers, bidirectional=bidirectional, **kw)
    return ModelBundle(
        model.eval(), (torch.randn(1, 8, 8),), "seq", "classification", 10, "tests.taskmodels"
    )


@pytest.mark.parametrize(("kind", "layers", "bidirectional"), RECURRENT)
def test_the_linear_form_of_a_recurrent_layer_computes_what_the_fused_layer_does(
    kind: str, layers: int, bidirectional: bool
) -> None:
    torch.manual_seed(0)
    fused = getattr(nn, kind)(8, 16, num_layers=layers, bidirectional=bidirectional).eval()
    linear = LinearRecurrent.from_layer(fused).eval()
    x = torch.randn(7, 3, 8)  # (time, batch, features): batch_first=False
    states = layers * (2 if bidirectional else 1)
    h0 = torch.randn(states, 3, 16)
    hx = (h0, torch.randn(states, 3, 16)) if kind == "LSTM" else h0
    with torch.no_grad():
        for args in ((x,), (x, hx)):
            want, got = fused(*args), linear(*args)
            torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-4)


def test_linearizing_a_model_replaces_every_recurrent_layer_but_an_lstm_with_projections() -> None:
    model = nn.ModuleDict({"gru": nn.GRU(4, 8), "proj": nn.LSTM(4, 8, proj_size=3)})
    assert linearize_recurrent(model) == ["gru"]
    assert isinstance(model["gru"], LinearRecurrent)
    assert isinstance(model["proj"], nn.LSTM)


@pytest.mark.parametrize(("kind", "layers", "bidirectional"), RECURRENT[:3])
@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8_dynamic", "int8"])
def test_recurrent_classifiers_export_at_every_tflite_precision_and_track_torch(
    tmp_path: Path, kind: str, layers: int, bidirectional: bool, precision: str
) -> None:
    from bench.models import tflite_ops

    bundle = _sequence_bundle(kind, layers, bidirectional)
    rng = np.random.default_rng(0)
    calib = Split((rng.uniform(0, 1, size=(64, 8, 8)).astype(np.float32),))
    artifact = export(
        bundle, None, ExportConfig(precision=precision, calibration_samples=64), tmp_path,
        calibration=calib,
    )  # fmt: skip
    got = run_artifact_all(artifact.path, calib)[0]
    want = predict(bundle.module, calib)
    agreement = float(np.mean(got.argmax(1) == want.argmax(1)))
    assert agreement >= 0.98
    if precision == "int8":
        # The gate matrices are int8 FULLY_CONNECTED ops, not float ones between (de)quantizes;
        # the gates' products and sums and the cell state stay float, never int8 step to step.
        ops = tflite_ops(artifact.path)
        assert "FULLY_CONNECTED" not in ops["float_ops"]
        assert any(op.startswith("FULLY_CONNECTED(int32,int8)") for op in ops["ops"])
        assert {"MUL", "ADD", "LOGISTIC", "TANH"} <= set(ops["float_ops"])
        assert not any(op.startswith(("MUL(int8", "ADD(int8")) for op in ops["ops"])


@pytest.mark.parametrize(("kind", "layers", "bidirectional"), RECURRENT)
def test_macs_count_a_recurrent_layers_matrices_per_step_fused_or_in_linear_form(
    kind: str, layers: int, bidirectional: bool
) -> None:
    bundle = _sequence_bundle(kind, layers, bidirectional)
    gates = {"GRU": 3, "LSTM": 4, "RNN": 1}[kind]
    directions = 2 if bidirectional else 1
    per_step = sum(
        directions * gates * 24 * ((8 if layer == 0 else 24 * directions) + 24)
        for layer in range(layers)
    )
    head = 24 * directions * 10
    x = torch.randn(3, 8, 8)  # 3 samples of 8 steps
    linear = copy.deepcopy(bundle.module)
    linearize_recurrent(linear)
    assert count_macs(bundle.module, (x,)) == 3 * (8 * per_step + head)
    assert count_macs(linear, (x,)) == 3 * (8 * per_step + head)


def test_macs_count_an_lstm_with_projections_and_packed_sequences() -> None:
    layer = nn.LSTM(8, 32, proj_size=8)
    assert count_macs(layer, (torch.randn(5, 1, 8),)) == 5 * (4 * 32 * (8 + 8) + 8 * 32)
    packed = nn.utils.rnn.pack_sequence([torch.randn(5, 8), torch.randn(3, 8)])

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(8, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.rnn(packed)[1]

    assert count_macs(Packed(), (torch.zeros(1),)) == 8 * 3 * 16 * (8 + 16)


def test_a_gru_classifier_exports_to_onnx_and_runs_there(tmp_path: Path) -> None:
    bundle = _sequence_bundle("GRU", 1, False)
    split = Split((np.random.default_rng(1).uniform(size=(16, 8, 8)).astype(np.float32),))
    artifact = export(bundle, None, ExportConfig("onnx", "fp32"), tmp_path)
    got = run_artifact_all(artifact.path, split)[0]
    np.testing.assert_allclose(got, predict(bundle.module, split), atol=1e-4)


@pytest.mark.parametrize("final_state", [False, True], ids=["reads-sequence", "reads-h_n"])
@pytest.mark.parametrize(("kind", "layers", "bidirectional"), RECURRENT[:4])
def test_pruning_removes_hidden_units_of_recurrent_layers_and_their_readers_follow(
    kind: str, layers: int, bidirectional: bool, final_state: bool
) -> None:
    bundle = _sequence_bundle(kind, layers, bidirectional, final_state=final_state)
    outcome = structured_prune(bundle.module, bundle.example_inputs, ChannelPrune(ratio=0.5))
    assert outcome.hidden_units == [("rnn", 24, 12)]
    x = torch.randn(5, 8, 8)
    with torch.no_grad():
        assert outcome.model(x).shape == (5, 10)
    assert count_params(outcome.model) < 0.4 * count_params(bundle.module)
    assert outcome.model.head.out_features == 10


def test_lowrank_factorizes_the_input_and_recurrent_matrices_of_an_lstm() -> None:
    bundle = _sequence_bundle("LSTM", 2, True)
    model, done, skipped = factorize_module(
        bundle.module, bundle.example_inputs, LowRank(ratio=0.5)
    )
    names = {d.name for d in done}
    assert {"rnn.cells.0.hh", "rnn.cells.3.hh", "rnn.cells.2.ih"} <= names
    assert [s.name for s in skipped] == ["head"]
    with torch.no_grad():
        assert model(torch.randn(3, 8, 8)).shape == (3, 10)


@pytest.fixture(scope="module")
def digit_rows() -> DataSet:
    return load_data("tests.taskmodels:digit_rows")


@pytest.fixture(scope="module")
def trained_gru(digit_rows: DataSet) -> ModelBundle:
    bundle = load_model("tests.taskmodels:gru_classifier?hidden=32")
    return prepare_baseline(bundle, digit_rows, epochs=6, lr=5e-3)


def _unlabelled(data: DataSet) -> DataSet:
    return DataSet(data.name, Split(data.train.inputs), Split(data.val.inputs), data.test)


def test_a_gru_distills_into_half_its_hidden_size_with_feature_matching(
    tmp_path: Path, trained_gru: ModelBundle, digit_rows: DataSet
) -> None:
    result = compress(
        trained_gru, _unlabelled(digit_rows), [Distill(student=0.5, epochs=2)], tmp_path
    )
    student = result.bundle.module
    assert isinstance(student.rnn, LinearRecurrent) and student.rnn.hidden_size == 16
    notes = " ".join(n for s in result.steps for n in s.notes)
    assert "feature distillation at 1 layer(s) (rnn)" in notes
    assert result.artifact_metrics[0]["metric"] == "accuracy"


def test_distillation_trains_differently_from_the_pruned_fine_tune_of_the_same_cut(
    tmp_path: Path, trained_gru: ModelBundle, digit_rows: DataSet
) -> None:
    data = _unlabelled(digit_rows)
    pruned = compress(
        trained_gru, data, [ChannelPrune(ratio=0.5), FineTune(epochs=2)], tmp_path / "p"
    )
    distilled = compress(trained_gru, data, [Distill(student=0.5, epochs=2)], tmp_path / "d")
    outputs = [predict(r.bundle.module, digit_rows.test) for r in (pruned, distilled)]
    assert count_params(pruned.bundle.module) == count_params(distilled.bundle.module)
    assert not np.allclose(outputs[0], outputs[1], atol=1e-4)
    assert Distill(features=0).features == 0
    with pytest.raises(Exception, match="features must be >= 0"):
        Distill(features=-1.0)
    with pytest.raises(Exception, match="mixup must be >= 0"):
        Distill(mixup=-0.5)


# One small model of each class, briefly trained, and a few hundred unlabelled samples of its data.
CLASSES = [
    pytest.param("tests.taskmodels:gru_classifier?hidden=16", "tests.taskmodels:digit_rows", id="gru"),
    pytest.param("tests.taskmodels:lstm_classifier?hidden=8", "tests.taskmodels:digit_rows", id="lstm"),
    pytest.param("tests.taskmodels:two_head_net", "tests.taskmodels:digits_with_boxes", id="two-outputs"),
    pytest.param("tests.taskmodels:mlp_regressor", "tests.taskmodels:diabetes", id="regressor"),
    pytest.param(
        "builtin:hf_convnext?hidden_sizes=[8,8,16,16]&depths=[1,1,1,1]", "rgb32", id="convnext"
    ),
]  # fmt: skip


def _small_data(spec: str) -> tuple[DataSet, DataSet]:
    """A few hundred samples of a class's data: labelled (to train the teacher) and unlabelled."""
    if spec == "rgb32":
        from bench.models import digits_rgb32

        data = digits_rgb32()
    else:
        data = load_data(spec)
    train, val = data.train.subset(256), data.val.subset(64)
    labelled = DataSet(data.name, train, val, data.test.subset(64))
    return labelled, DataSet(data.name, Split(train.inputs), Split(val.inputs), labelled.test)


def _trained_weights(bundle: ModelBundle, data: DataSet, steps: list) -> dict[str, torch.Tensor]:
    from host.compress.api import apply_recipe

    candidate, _ = apply_recipe(bundle, data, Recipe(steps=tuple(steps)), seed=3)
    return {k: v.float() for k, v in candidate.module.state_dict().items() if v.is_floating_point()}


@pytest.mark.parametrize(("model", "data"), CLASSES)
def test_a_distilled_student_is_trained_differently_from_the_pruned_fine_tune_of_its_cut(
    model: str, data: str
) -> None:
    torch.manual_seed(0)
    labelled, split = _small_data(data)
    bundle = prepare_baseline(load_model(model), labelled, epochs=3, lr=3e-3)
    pruned = _trained_weights(bundle, split, [ChannelPrune(ratio=0.5), FineTune(epochs=2)])
    distilled = _trained_weights(bundle, split, [Distill(student=0.5, epochs=2)])
    # The same cut: the same layers, of the same shapes.
    assert {k: v.shape for k, v in pruned.items()} == {k: v.shape for k, v in distilled.items()}
    apart = max(float((pruned[k] - distilled[k]).norm() / pruned[k].norm().clamp_min(1e-8))
                for k in pruned)  # fmt: skip
    assert apart > 0.01
    # What makes the difference: with feature matching and mixed inputs off, distilling into
    # the pruned student is exactly the pruned fine-tune (same cut, same loss, same batches).
    cut = _trained_weights(bundle, split, [ChannelPrune(ratio=0.5)])
    assert any(not torch.equal(cut[k], pruned[k]) for k in cut)  # the fine-tune did train
    plain = _trained_weights(bundle, split, [Distill(student=0.5, epochs=2, features=0, mixup=0)])
    for key, value in pruned.items():
        torch.testing.assert_close(plain[key], value)


class _Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def test_a_label_free_recovery_ranks_epochs_by_kl_to_the_teacher_not_by_a_tied_agreement() -> None:
    from host.train import _val_score

    teacher = np.random.default_rng(0).normal(size=(64, 10)).astype(np.float32)
    split = Split((teacher,))  # the teacher's own logits in, scaled logits out
    scored = [
        _val_score(_Scale(f), split, teacher, "classification", torch.device("cpu"), 32)
        for f in (0.3, 0.9, 1.0)
    ]
    # The same top-1 agreement (1.0) for all three; the closer one to the teacher ranks higher.
    assert [score for _, score, _ in scored] == [1.0, 1.0, 1.0]
    assert scored[0][0] < scored[1][0] < scored[2][0] == pytest.approx(0.0, abs=1e-9)
    assert scored[0][2] == "agreement"


# ---------------------------------------------------------------- several outputs


def _two_head_bundle() -> ModelBundle:
    torch.manual_seed(0)
    return ModelBundle(
        TwoHeadNet().eval(), (torch.randn(1, 1, 8, 8),), "two", "classification", 10, "x"
    )


def test_each_output_has_its_own_head_found_by_what_it_is_computed_from() -> None:
    bundle = _two_head_bundle()
    heads = head_modules(bundle.module, bundle.example_inputs)
    assert heads == [bundle.module.classes, bundle.module.box]


def test_pruning_and_lowrank_keep_every_outputs_head_intact() -> None:
    bundle = _two_head_bundle()
    pruned = structured_prune(bundle.module, bundle.example_inputs, ChannelPrune(ratio=0.5)).model
    with torch.no_grad():
        classes, box = pruned(torch.randn(2, 1, 8, 8))
    assert classes.shape == (2, 10) and box.shape == (2, 4)
    assert pruned.classes.out_features == 10 and pruned.box.out_features == 4
    _, done, skipped = factorize_module(bundle.module, bundle.example_inputs, LowRank(ratio=0.5))
    assert {s.name for s in skipped if "output head" in s.reason} == {"classes", "box"}
    assert "trunk.7" in {d.name for d in done}


@pytest.fixture(scope="module")
def boxes() -> DataSet:
    return load_data("tests.taskmodels:digits_with_boxes")


def test_a_two_output_net_trains_on_both_targets_and_a_metric_sees_both(
    tmp_path: Path, boxes: DataSet
) -> None:
    assert boxes.train.labels.dtype == np.int64 and boxes.train.more_labels[0].shape[1] == 4
    bundle = prepare_baseline(load_model("tests.taskmodels:two_head_net"), boxes, epochs=3)
    box_error = np.abs(predict_box(bundle, boxes.test) - boxes.test.more_labels[0]).mean()
    assert box_error < 0.1  # trained on y1 too, not only on the class labels
    result = compress(
        bundle, boxes, "prune50_ft", tmp_path, metric="tests.taskmodels:class_and_box_error"
    )
    entry = result.artifact_metrics[0]
    assert entry["metric"] == "accuracy" and entry["metric_value"] > 0.8
    assert entry["user_metric"]["metric"] == "class_and_box_error"
    with np.load(tmp_path / "eval.npz") as saved:
        assert {"x", "y", "y1"} <= set(saved.files)


def predict_box(bundle: ModelBundle, split: Split) -> np.ndarray:
    from host.metrics import predict_all

    return predict_all(bundle.module, split)[1]


def test_distilling_a_two_output_net_keeps_both_outputs(tmp_path: Path, boxes: DataSet) -> None:
    bundle = load_model("tests.taskmodels:two_head_net")
    unlabelled = DataSet("b", Split(boxes.train.inputs), Split(boxes.val.inputs), boxes.test)
    result = compress(bundle, unlabelled, [Distill(student=0.5, epochs=1)], tmp_path)
    with torch.no_grad():
        classes, box = result.bundle.module(torch.randn(2, 1, 8, 8))
    assert classes.shape == (2, 10) and box.shape == (2, 4)


# ---------------------------------------------------------------- real-valued targets


@pytest.fixture(scope="module")
def diabetes() -> DataSet:
    return load_data("tests.taskmodels:diabetes")


def test_a_regressor_is_trained_and_scored_on_its_real_valued_labels(
    tmp_path: Path, diabetes: DataSet
) -> None:
    assert diabetes.train.labels.dtype == np.float32 and diabetes.num_classes is None
    result = compress(
        "tests.taskmodels:mlp_regressor", diabetes, "baseline", tmp_path, pretrain_epochs=20
    )
    entry = result.artifact_metrics[0]
    assert entry["metric"] == "r2" and entry["metric_value"] > 0.2
    with np.load(tmp_path / "eval.npz") as saved:
        assert saved["y"].dtype == np.float32 and "ref" not in saved.files


def test_a_classifier_given_real_valued_labels_asks_for_class_labels(
    tmp_path: Path, diabetes: DataSet
) -> None:
    with pytest.raises(DataError, match="integer class labels.*--task regression"):
        compress(
            "builtin:mlp?input_shape=[10]", diabetes, "baseline", tmp_path, task="classification"
        )
    assert not tmp_path.exists() or not list(tmp_path.iterdir())


def test_multi_dimensional_and_several_target_arrays_load_from_an_npz(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(
        path, x=rng.normal(size=(40, 3)), y0=rng.integers(0, 2, 40), y1=rng.normal(size=(40, 2, 2))
    )
    data = load_data(str(path))
    assert data.train.labels.dtype == np.int64 and data.train.more_labels[0].shape[1:] == (2, 2)
    assert isinstance(data.test.targets, list) and len(data.test.targets) == 2
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.array(["a"] * 40))
    with pytest.raises(DataError, match="numeric array"):
        load_data(str(path))
    np.savez(path, x=rng.normal(size=(40, 3)), y=np.full(40, np.nan))
    with pytest.raises(DataError, match="NaN"):
        load_data(str(path))


def test_lowrank_recovers_a_regressor_without_labels_to_within_0_02_r2(
    tmp_path: Path, diabetes: DataSet
) -> None:
    teacher = prepare_baseline(load_model("tests.taskmodels:mlp_regressor"), diabetes, epochs=20)
    unlabelled = DataSet(
        "d", Split(diabetes.train.inputs), Split(diabetes.val.inputs), diabetes.test
    )
    base = compress(teacher, unlabelled, "baseline", tmp_path / "b").artifact_metrics[0]
    low = compress(teacher, unlabelled, "lowrank_ft", tmp_path / "l").artifact_metrics[0]
    assert low["metric"] == "r2"
    assert low["metric_value"] >= base["metric_value"] - 0.02


# ---------------------------------------------------------------- modern conv blocks


def test_a_layer_scale_after_a_linear_is_folded_into_it_and_nothing_else_changes() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 6)
            self.gamma = nn.Parameter(torch.rand(6) + 0.5)
            self.shared = nn.Parameter(torch.rand(6))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            # gamma scales fc's output only; shared is read twice and must stay.
            return self.gamma * self.fc(x) + self.shared * x + self.shared

    torch.manual_seed(0)
    block = Block().eval()
    before = copy.deepcopy(block)
    x = torch.randn(3, 6)
    assert fold_layer_scales(block, (x,)) == ["gamma"]
    assert torch.equal(block.gamma.detach(), torch.ones(6))
    assert torch.equal(block.shared, before.shared)
    torch.testing.assert_close(block(x), before(x))


def test_a_linear_on_a_4d_input_multiplies_a_2d_view_and_computes_the_same() -> None:
    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pointwise = nn.Linear(4, 6)
            self.head = nn.Linear(6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.pointwise(x.permute(0, 2, 3, 1)).mean((1, 2)))

    torch.manual_seed(0)
    model = ChannelsLast().eval()
    before = copy.deepcopy(model)
    x = torch.randn(2, 4, 3, 3)
    assert flatten_linear_inputs(model, (x,)) == ["pointwise"]
    assert isinstance(model.head, nn.Linear)
    torch.testing.assert_close(model(x), before(x))


@pytest.mark.parametrize("fmt,precision", [("tflite", "fp32"), ("tflite", "fp16"),
                                           ("tflite", "int8_dynamic"), ("tflite", "int8"),
                                           ("onnx", "fp32")])  # fmt: skip
def test_transformers_convnext_exports_at_every_precision(
    tmp_path: Path, fmt: str, precision: str
) -> None:
    pytest.importorskip("transformers")
    bundle = load_model(
        "builtin:hf_convnext", hidden_sizes=[8, 16, 32, 64], depths=[1, 1, 1, 1], image_size=32
    )
    with torch.no_grad():  # as after training: transformers initialises every bias at zero
        for layer in bundle.module.modules():
            if isinstance(layer, nn.Linear):
                layer.bias.normal_(0, 0.1)
    rng = np.random.default_rng(0)
    calib = Split((rng.normal(size=(16, 3, 32, 32)).astype(np.float32),))
    artifact = export(
        bundle, None, ExportConfig(fmt, precision, calibration_samples=16), tmp_path,
        calibration=calib,
    )  # fmt: skip
    got = run_artifact_all(artifact.path, calib)[0]
    want = predict(bundle.module, calib)
    assert got.shape == want.shape == (16, 10)
    if precision in ("fp32", "fp16"):
        np.testing.assert_allclose(got, want, atol=2e-2, rtol=1e-2)


def test_a_converter_refusal_names_the_converters_op_and_no_guessed_cause() -> None:
    from host.export.diagnose import export_error

    exc = RuntimeError(
        "Failed to run converter passes: /x/model.py:12:0: error: 'tfl.batch_matmul' op found "
        "invalid output rank, expected 3 but got 4"
    )
    message = str(export_error(exc, nn.Linear(2, 2), (torch.randn(1, 2),), "TFLite conversion"))
    assert "op tfl.batch_matmul made from /x/model.py:12" in message
    assert "expected 3 but got 4" in message
    assert "control flow" not in message
    assert isinstance(export_error(exc, None, (), "x"), ExportError)


# ---------------------------------------------------------------- output objects


def test_a_factory_returning_a_transformers_output_object_is_unwrapped_with_a_note(
    capsys: pytest.CaptureFixture[str],
) -> None:
    pytest.importorskip("transformers")
    bundle = load_model("tests.taskmodels:hf_output_classifier")
    assert (
        "returns a ImageClassifierOutputWithNoAttention; using its .logits"
        in capsys.readouterr().err
    )
    with torch.no_grad():
        out = bundle.module(*bundle.example_inputs)
    assert isinstance(out, torch.Tensor) and out.shape == (1, 10)
    assert bundle.task == "classification" and bundle.num_classes == 10


def test_an_output_object_without_a_known_tensor_field_names_its_fields() -> None:
    with pytest.raises(ModelSpecError, match=r"returns a dict with fields scores, boxes"):
        load_model("tests.taskmodels:dict_output_net")
