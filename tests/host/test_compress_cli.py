"""`edgetailor compress` as a user runs it: a real subprocess, real files, JSON and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from host.cli.main import main as cli_main
from host.compress import NAMED_RECIPES, ChannelPrune, FineTune, Int8Dynamic, Recipe

CLI = [sys.executable, "-c", "from host.cli.main import main; main()"]
REPO = Path(__file__).resolve().parents[2]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, cwd=REPO, timeout=300)


def test_compress_with_a_recipe_file_writes_artifacts_manifests_and_prints_json(
    tmp_path: Path,
) -> None:
    recipe = tmp_path / "recipe.json"
    recipe.write_text(
        Recipe.of(ChannelPrune(ratio=0.5), FineTune(epochs=3), Int8Dynamic(), name="mine").to_json()
    )
    out = tmp_path / "out"
    done = _run(
        "compress",
        "--model",
        "builtin:digits_cnn",
        "--data",
        "builtin:digits",
        "--recipe",
        str(recipe),
        "--out",
        str(out),
        "--pretrain-epochs",
        "3",
        "--json",
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["precision"] == "int8_dynamic"
    assert [s["technique"] for s in result["recipe"]["steps"]] == [
        "prune_channels",
        "finetune",
        "int8_dynamic",
    ]
    (artifact,) = result["artifacts"]
    assert Path(artifact["path"]).is_file()
    assert (out / f"{artifact['sha256']}.json").is_file()
    with np.load(out / "eval.npz", allow_pickle=False) as eval_data:  # for `bench --eval`
        assert len(eval_data["x"]) == len(eval_data["y"]) > 0
    assert artifact["metric"] == "accuracy" and artifact["metric_value"] > 0.5
    assert result["steps"][0]["params_after"] < result["steps"][0]["params_before"]


def test_compress_list_names_techniques_recipes_and_search_spaces() -> None:
    done = _run("compress", "--list", "--json")
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    names = {t["name"] for t in listing["techniques"]}
    assert {
        "prune_unstructured",
        "prune_channels",
        "fp16",
        "int8_dynamic",
        "int8",
        "qat",
        "distill",
        "lowrank",
        "finetune",
    } <= names
    assert "prune50_ft_int8" in listing["recipes"]
    assert "default" in listing["search_spaces"]


def test_unknown_technique_in_a_recipe_file_is_a_clear_error(tmp_path: Path) -> None:
    recipe = tmp_path / "bad.json"
    recipe.write_text(
        json.dumps([{"technique": "prune_channels", "ratio": 0.5}, {"technique": "turbo"}])
    )
    done = _run(
        "compress",
        "--model",
        "builtin:mlp",
        "--data",
        "builtin:digits",
        "--recipe",
        str(recipe),
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 2
    assert "recipe step 2" in done.stderr and "unknown technique 'turbo'" in done.stderr
    assert "Traceback" not in done.stderr


def test_data_file_with_mismatched_shapes_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "bad.npz"
    np.savez(data, x=np.zeros((20, 1, 8, 8), np.float32), y=np.zeros(17, np.int64))
    done = _run(
        "compress",
        "--model",
        "builtin:digits_cnn",
        "--data",
        str(data),
        "--recipe",
        "int8_dynamic",
        "--out",
        str(tmp_path / "out"),
    )
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr
    assert "17" in done.stderr and "20" in done.stderr


# -- task, metric, eval set, and a CLI that keeps stdout clean ---------------------------------


def _one_line_error(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert "Traceback" not in done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr[-2000:]
    return errors[0]


def test_a_factory_that_raises_is_one_line_exit_2_and_leaves_nothing_in_out(
    tmp_path: Path,
) -> None:
    out = tmp_path / "out"
    done = _run(
        "compress", "--model", "tests.taskmodels:broken_factory", "--data", "builtin:digits",
        "--recipe", "int8_dynamic", "--out", str(out),
    )  # fmt: skip
    line = _one_line_error(done)
    assert "RuntimeError: weights file /models/enc.bin not found (a second line" in line
    assert not out.exists()


def test_data_of_the_wrong_shape_is_one_line_exit_2_and_out_keeps_only_what_it_had(
    tmp_path: Path,
) -> None:
    data = tmp_path / "rgb.npz"
    np.savez(data, x=np.zeros((40, 3, 8, 8), np.float32), y=np.arange(40) % 10)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    done = _run(
        "compress", "--model", "builtin:digits_cnn", "--data", str(data),
        "--recipe", "int8_dynamic", "--out", str(out),
    )  # fmt: skip
    line = _one_line_error(done)
    assert "fails on --data" in line and "(1, 8, 8)" in line and "(3, 8, 8)" in line
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_the_installed_command_imports_model_and_metric_packages_from_the_working_directory(
    tmp_path: Path,
) -> None:
    """`edgetailor` (the console script, not ``python -c``) run from a user's project root finds
    ``mymodels.nets:make`` there, as ``python -m`` would."""
    package = tmp_path / "mymodels_cwd"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(
        "import numpy as np\nimport torch\nfrom torch import nn\n\n"
        "def make():\n"
        "    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 10))\n"
        "    return net, (torch.zeros(1, 1, 8, 8),), {'task': 'classification'}\n\n"
        "def top1(outputs, labels):\n"
        "    return float(np.mean(outputs.argmax(1) == labels))\n"
    )
    script = Path(sys.executable).with_name("edgetailor")
    done = subprocess.run(
        [str(script), "compress", "--model", "mymodels_cwd.nets:make", "--data", "builtin:digits",
         "--metric", "mymodels_cwd.nets:top1", "--recipe", "baseline", "--out", "out", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    (artifact,) = json.loads(done.stdout)["artifacts"]
    assert artifact["user_metric"]["metric"] == "top1"
    assert artifact["user_metric"]["metric_value"] == pytest.approx(artifact["metric_value"])
    assert (tmp_path / "out" / f"{artifact['sha256']}.json").is_file()


def test_json_stdout_stays_json_while_the_int8_converter_prints(tmp_path: Path) -> None:
    # litert-torch's quantizer prints "Relu partition has more than one output node" for every
    # residual add+ReLU of resnet8, from Python and C++, on stdout.
    done = _run(
        "compress", "--model", "builtin:resnet8?width=0.5", "--data", "builtin:digits",
        "--recipe", "int8", "--out", str(tmp_path / "out"), "--eval-samples", "50", "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    assert result["eval_samples"] == 50
    assert "partition" not in done.stdout
    # Quiet by default: the libraries' import-time chatter is not shown either.
    for chatter in ("torchao", "triton", "absl::InitializeLog", "FutureWarning"):
        assert chatter not in done.stderr, chatter


def test_verbose_shows_the_libraries_chatter_on_stderr_never_on_stdout(tmp_path: Path) -> None:
    done = _run(
        "compress", "--model", "builtin:resnet8?width=0.5", "--data", "builtin:digits",
        "--recipe", "int8", "--out", str(tmp_path / "out"), "--eval-samples", "50", "--json",
        "-v",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    json.loads(done.stdout)
    assert "partition has more than one output node" in done.stderr


@pytest.mark.parametrize("recipe", sorted(NAMED_RECIPES))
def test_json_output_of_every_named_recipe_parses(
    recipe: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([
            "compress", "--model", "builtin:digits_cnn?width=0.5", "--data", "builtin:digits",
            "--recipe", recipe, "--out", str(tmp_path / "out"), "--eval-samples", "60", "--json",
        ])  # fmt: skip
    captured = capfd.readouterr()
    assert exit_info.value.code == 0, captured.err[-2000:]
    result = json.loads(captured.out)
    assert result["recipe"]["name"] == recipe
    (artifact,) = result["artifacts"]
    assert artifact["metric"] == "accuracy" and artifact["eval_samples"] == 60
    low, high = artifact["metric_interval"]
    assert low <= artifact["metric_value"] <= high


TINY_HF_MOBILENETV2 = "builtin:hf_mobilenetv2?depth_multiplier=0.35&image_size=16"
TINY_HF_BERT = (
    "builtin:hf_bert?vocab_size=60&seq_len=12&hidden_size=32&layers=1&heads=2&intermediate_size=64"
)
TRANSFORMERS_CASES = {
    # transformers' MobileNetV2: its int8 conversion prints C++ warnings on fd 1/2 ("quantizer's
    # output has another quantizer"); QAT files go through the same converter.
    "hf_mobilenetv2-int8": (TINY_HF_MOBILENETV2, "images", "int8"),
    "hf_bert-int8_dynamic": (TINY_HF_BERT, "tokens", "int8_dynamic"),
    # BERT's attention-mask add spans the float range (-3.4e38); quantized, the runtime aborted the
    # whole process loading the file. With one head the mask has the scores' shape.
    "hf_bert-qat": (TINY_HF_BERT, "tokens", "qat"),
    "hf_bert_one_head-int8": (TINY_HF_BERT.replace("heads=2", "heads=1"), "tokens", "int8"),
}


@pytest.mark.parametrize("case", sorted(TRANSFORMERS_CASES))
def test_json_output_on_transformers_models_parses_while_their_converters_print(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("transformers")
    model, kind, recipe = TRANSFORMERS_CASES[case]
    rng = np.random.default_rng(0)
    data = tmp_path / "data.npz"
    if kind == "images":
        np.savez(data, x=rng.normal(size=(120, 3, 16, 16)).astype(np.float32))
    else:
        mask = (np.arange(12)[None] < rng.integers(4, 13, size=(120, 1))).astype(np.int64)
        np.savez(data, x0=rng.integers(1, 60, size=(120, 12)) * mask, x1=mask)
    with pytest.raises(SystemExit) as exit_info:
        cli_main([
            "compress", "--model", model, "--data", str(data), "--recipe", recipe,
            "--out", str(tmp_path / "out"), "--json",
        ])  # fmt: skip
    captured = capfd.readouterr()
    assert exit_info.value.code == 0, captured.err[-2000:]
    result = json.loads(captured.out)
    (artifact,) = result["artifacts"]
    assert artifact["metric"] == ("agreement" if kind == "images" else "cosine")


def test_a_guessed_task_is_stated_with_how_to_override_it_and_task_overrides(
    tmp_path: Path,
) -> None:
    # Unit-length rows and no info dict: an embedding, not 24 class scores.
    done = _run(
        "compress", "--model", "tests.taskmodels:unnamed_encoder",
        "--data", "tests.taskmodels:sentences", "--recipe", "baseline",
        "--out", str(tmp_path / "guess"), "--json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    guessed = json.loads(done.stdout)
    assert guessed["task"] == "embedding"
    assert "guessed" in guessed["task_note"] and "--task" in guessed["task_note"]
    assert "unit length" in done.stderr and "--task" in done.stderr
    assert guessed["artifacts"][0]["metric"] == "cosine"
    forced = _run(
        "compress", "--model", "tests.taskmodels:unnamed_encoder",
        "--data", "tests.taskmodels:sentences", "--recipe", "baseline",
        "--out", str(tmp_path / "forced"), "--task", "classification", "--json",
    )  # fmt: skip
    assert forced.returncode == 0, forced.stderr[-2000:]
    result = json.loads(forced.stdout)
    assert result["task"] == "classification" and result["task_note"] is None
    assert result["artifacts"][0]["metric"] == "agreement"


def test_a_small_eval_set_is_warned_about_in_the_output_and_the_manifest(tmp_path: Path) -> None:
    out = tmp_path / "out"
    done = _run(
        "compress", "--model", "tests.taskmodels:encoder", "--data",
        "tests.taskmodels:few_sentences", "--recipe", "baseline", "--out", str(out), "--json",
        "--metric", "tests.taskmodels:negative_distance",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout)
    (warning,) = result["eval_warnings"]
    assert "2 samples (fewer than 100)" in warning and "2 of the 16 samples" in warning
    assert "warning: the eval set has 2 samples" in done.stderr
    (artifact,) = result["artifacts"]
    manifest = json.loads((out / f"{artifact['sha256']}.json").read_text())
    assert manifest["metrics"]["eval_samples"] == 2
    assert "fewer than 100" in manifest["metrics"]["eval_warnings"]
    user = artifact["user_metric"]
    assert user["metric"] == "negative_distance"
    assert user["metric_value"] == pytest.approx(0.0, abs=1e-4)
    assert manifest["metrics"]["user_metric"] == "negative_distance"
    with np.load(out / "eval.npz", allow_pickle=False) as eval_data:
        assert str(eval_data["task"][0]) == "embedding" and len(eval_data["ref"]) == 2


def test_labels_past_the_models_classes_are_one_line_exit_2(
    tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli_main([
            "compress", "--model", "builtin:digits_cnn?num_classes=4", "--data", "builtin:digits",
            "--recipe", "baseline", "--out", str(tmp_path / "out"), "--pretrain-epochs", "1",
        ])  # fmt: skip
    err = capfd.readouterr().err
    assert exit_info.value.code == 2
    (line,) = [ln for ln in err.splitlines() if ln.startswith("error:")]
    assert "labels up to 9" in line and "scores 4 classes" in line and "num_classes=10" in line
    assert not (tmp_path / "out").exists()


# One model of each class of docs/models.md, as its bench row runs it: a recurrent classifier, a
# net with two outputs and two target arrays (and a metric over both), a regressor with real
# labels, transformers' ConvNeXt.
MODEL_CLASS_CASES = {
    "gru-int8": ("tests.taskmodels:gru_classifier?hidden=16", "tests.taskmodels:digit_rows",
                 "int8", "accuracy"),
    "lstm-int8_dynamic": ("tests.taskmodels:lstm_classifier?hidden=16",
                          "tests.taskmodels:digit_rows", "int8_dynamic", "accuracy"),
    "two_outputs-int8": ("tests.taskmodels:two_head_net", "tests.taskmodels:digits_with_boxes",
                         "int8", "accuracy"),
    "mlp_regressor-lowrank_ft": ("tests.taskmodels:mlp_regressor", "tests.taskmodels:diabetes",
                                 "lowrank_ft", "r2"),
    "convnext-fp16": ("builtin:hf_convnext?hidden_sizes=[8,16,32,64]&depths=[1,1,1,1]",
                      "images", "fp16", "agreement"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(MODEL_CLASS_CASES))
def test_json_output_on_each_model_class_parses(
    case: str, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    model, data, recipe, metric = MODEL_CLASS_CASES[case]
    if data == "images":
        pytest.importorskip("transformers")
        data = str(tmp_path / "images.npz")
        np.savez(data, x=np.random.default_rng(0).normal(size=(120, 3, 32, 32)).astype(np.float32))
    extra = ["--metric", "tests.taskmodels:class_and_box_error"] if "two_outputs" in case else []
    pretrain = [] if metric == "agreement" else ["--pretrain-epochs", "1"]  # unlabelled images
    with pytest.raises(SystemExit) as exit_info:
        cli_main([
            "compress", "--model", model, "--data", data, "--recipe", recipe,
            "--out", str(tmp_path / "out"), "--json", *pretrain, *extra,
        ])  # fmt: skip
    captured = capfd.readouterr()
    assert exit_info.value.code == 0, captured.err[-2000:]
    result = json.loads(captured.out)
    (artifact,) = result["artifacts"]
    assert artifact["metric"] == metric
    low, high = artifact["metric_interval"]
    assert low <= artifact["metric_value"] <= high
    if extra:
        assert artifact["user_metric"]["metric"] == "class_and_box_error"
