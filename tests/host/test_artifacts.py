"""Manifests built from real .tflite/.onnx/.npz files, signing, and the content-addressed directory."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from host.artifacts import ArtifactDir, ArtifactError, manifest_for_file
from host.errors import ConfigError
from shared.errors import SignatureError
from shared.hashing import sha256_file
from shared.signing import generate_key, verify_manifest


@pytest.fixture(scope="module")
def tflite_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import litert_torch
    import torch
    from torch import nn

    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    path = tmp_path_factory.mktemp("tfl") / "tiny.tflite"
    litert_torch.convert(model, (torch.zeros(1, 1, 8, 8),)).export(str(path))
    return path


@pytest.fixture
def onnx_file(tmp_path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["pixels"], ["scores"])],
        "tiny",
        [helper.make_tensor_value_info("pixels", TensorProto.FLOAT, ["batch", 10])],
        [helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", 10])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    return path


def test_a_tflite_manifest_describes_the_file_and_its_tensors(tflite_file: Path) -> None:
    manifest = manifest_for_file(tflite_file, recipe=[{"technique": "none"}], metrics={"params": 1})
    assert manifest.sha256 == sha256_file(tflite_file)
    assert manifest.size_bytes == tflite_file.stat().st_size
    assert (manifest.format, manifest.precision, manifest.name) == ("tflite", "fp32", "tiny")
    assert [(t.shape, t.dtype, t.quant) for t in manifest.inputs] == [
        ([1, 1, 8, 8], "float32", None)
    ]
    assert [(t.shape, t.dtype) for t in manifest.outputs] == [([1, 10], "float32")]
    assert manifest.recipe == [{"technique": "none"}] and manifest.signature is None


def test_an_onnx_manifest_reports_symbolic_dimensions_as_minus_one(onnx_file: Path) -> None:
    manifest = manifest_for_file(onnx_file)
    assert (manifest.format, manifest.precision) == ("onnx", "fp32")
    assert [(t.name, t.shape, t.dtype) for t in manifest.inputs] == [
        ("pixels", [-1, 10], "float32")
    ]
    assert [t.name for t in manifest.outputs] == ["scores"]


def test_an_eval_npz_manifest_lists_inputs_labels_and_references(tmp_path: Path) -> None:
    path = tmp_path / "eval.npz"
    np.savez(
        path,
        x=np.zeros((5, 1, 8, 8), np.float32),
        y=np.zeros(5, np.int64),
        ref=np.zeros((5, 10), np.float32),
    )
    manifest = manifest_for_file(path)
    assert (manifest.format, manifest.precision) == ("npz", "data")
    assert [(t.name, t.shape, t.dtype) for t in manifest.inputs] == [("x", [5, 1, 8, 8], "float32")]
    assert [t.name for t in manifest.outputs] == ["y", "ref"]


def test_an_npz_without_inputs_or_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    no_x = tmp_path / "labels_only.npz"
    np.savez(no_x, y=np.zeros(3, np.int64))
    with pytest.raises(ArtifactError, match="needs an array 'x'"):
        manifest_for_file(no_x)
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, x=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ArtifactError, match="plain arrays"):
        manifest_for_file(pickled)


def test_a_file_that_is_not_a_model_is_refused_with_its_name(tmp_path: Path) -> None:
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a flatbuffer at all" * 10)
    with pytest.raises(ArtifactError, match="fake.tflite is not a valid TFLite model"):
        manifest_for_file(fake)
    with pytest.raises(ConfigError, match="use .tflite, .onnx or .npz"):
        manifest_for_file(tmp_path / "model.pt")


def test_a_signed_manifest_verifies_with_the_public_key_and_not_with_another(
    tflite_file: Path,
) -> None:
    key = generate_key()
    manifest = manifest_for_file(tflite_file, signing_key=key, target_device="pi-01", sequence=3)
    verify_manifest(manifest, key.public_key(), device_id="pi-01")
    with pytest.raises(SignatureError):
        verify_manifest(manifest, generate_key().public_key(), device_id="pi-01")


def test_the_signing_key_can_be_given_as_a_pem_path(tflite_file: Path, tmp_path: Path) -> None:
    from shared.signing import save_private_key

    key = generate_key()
    save_private_key(key, tmp_path / "host.pem")
    manifest = manifest_for_file(tflite_file, signing_key=tmp_path / "host.pem")
    verify_manifest(manifest, key.public_key(), device_id="any")


def test_the_artifact_directory_stores_each_content_once_under_its_hash(
    tflite_file: Path, tmp_path: Path
) -> None:
    store = ArtifactDir(tmp_path / "artifacts")
    sha, path = store.add(tflite_file)
    again_sha, again_path = store.add(tflite_file)
    assert (sha, path) == (again_sha, again_path)
    assert path == tmp_path / "artifacts" / sha[:2] / f"{sha}.tflite"
    assert path.read_bytes() == tflite_file.read_bytes()
    assert store.find(sha) == path and store.find("0" * 64) is None
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temp files left behind
