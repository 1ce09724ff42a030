"""`edgetailor compress` as a user runs it: a real subprocess, real files, JSON and clear errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from host.compress import ChannelPrune, FineTune, Int8Dynamic, Recipe

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
