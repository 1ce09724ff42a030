"""Data specs: builtin digits, npz (x/y and x0/x1), image folders, module:factory, shape errors."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from host.data import DataSet, Split, load_data, write_eval_npz
from host.errors import DataError


def test_builtin_digits_split_sizes_are_fixed_and_the_seed_fixes_the_order() -> None:
    a = load_data("builtin:digits", seed=0)
    b = load_data("builtin:digits", seed=0)
    c = load_data("builtin:digits", seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (1257, 270, 270)
    assert a.train.inputs[0].shape[1:] == (1, 8, 8) and a.train.inputs[0].dtype == np.float32
    assert np.array_equal(a.test.labels, b.test.labels)
    assert np.array_equal(a.test.inputs[0], b.test.inputs[0])
    assert not np.array_equal(a.test.labels, c.test.labels)
    assert a.num_classes == 10 and 0.0 <= a.train.inputs[0].min() and a.train.inputs[0].max() <= 1.0


def test_digits_can_be_loaded_channels_last() -> None:
    data = load_data("builtin:digits", input_layout="NHWC")
    assert data.train.inputs[0].shape[1:] == (8, 8, 1)


def test_npz_with_x_and_y_is_split_with_labels(tmp_path: Path) -> None:
    path = tmp_path / "data.npz"
    x = np.random.default_rng(0).normal(size=(100, 5)).astype(np.float64)
    y = np.arange(100) % 3
    np.savez(path, x=x, y=y)
    data = load_data(str(path))
    assert len(data.train) + len(data.val) + len(data.test) == 100
    assert data.train.inputs[0].dtype == np.float32  # float64 narrowed for the model
    assert data.train.labels is not None and data.train.labels.dtype == np.int64
    # Rows and labels stay paired through the shuffle.
    first = data.train.inputs[0][0]
    row = int(np.argmin(np.abs(x.astype(np.float32) - first).sum(1)))
    assert y[row] == data.train.labels[0]


def test_npz_with_several_inputs_and_no_labels(tmp_path: Path) -> None:
    path = tmp_path / "tokens.npz"
    np.savez(path, x0=np.zeros((30, 12), np.int64), x1=np.ones((30, 12), np.int64))
    data = load_data(str(path))
    assert len(data.train.inputs) == 2
    assert data.train.inputs[0].dtype == np.int64
    assert data.train.labels is None and not data.has_labels


def test_npz_with_mismatched_sample_counts_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x0=np.zeros((30, 4), np.float32), x1=np.zeros((29, 4), np.float32))
    with pytest.raises(DataError, match=r"different numbers of samples \(30, 29\)"):
        load_data(str(path))


def test_npz_with_wrong_label_count_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, x=np.zeros((30, 4), np.float32), y=np.zeros(31, np.int64))
    with pytest.raises(DataError, match="31 labels for 30 samples"):
        load_data(str(path))


def test_npz_without_x_names_what_it_holds(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, features=np.zeros((10, 4)))
    with pytest.raises(DataError, match="holds features; it needs x"):
        load_data(str(path))


def test_npz_with_ready_splits_keeps_them(tmp_path: Path) -> None:
    path = tmp_path / "splits.npz"
    np.savez(
        path,
        train_x=np.zeros((20, 3), np.float32),
        train_y=np.zeros(20, np.int64),
        val_x=np.zeros((5, 3), np.float32),
        val_y=np.zeros(5, np.int64),
        test_x=np.zeros((7, 3), np.float32),
        test_y=np.zeros(7, np.int64),
    )
    data = load_data(str(path))
    assert (len(data.train), len(data.val), len(data.test)) == (20, 5, 7)


def test_image_folder_of_png_files_gives_one_class_per_subfolder(tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, level in (("cat", 40), ("dog", 200)):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(rng.normal(level, 10, size=(6, 5)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_data(str(tmp_path / "imgs"))
    assert data.train.inputs[0].shape[1:] == (1, 6, 5)
    everything = Split(
        tuple(np.concatenate([s.inputs[0] for s in (data.train, data.val, data.test)])[None]),
        np.concatenate([s.labels for s in (data.train, data.val, data.test)]),
    )
    dark = everything.inputs[0][everything.labels == 0].mean()
    light = everything.inputs[0][everything.labels == 1].mean()
    assert sorted(set(everything.labels.tolist())) == [0, 1]
    assert dark < 0.3 < light  # "cat" (dark) is class 0, "dog" (light) class 1: sorted names


def test_module_factory_data_spec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "userdata_mod.py").write_text(
        textwrap.dedent(
            """
            import numpy as np

            def make(seed=0):
                rng = np.random.default_rng(seed)
                return rng.normal(size=(50, 4)).astype(np.float32), (np.arange(50) % 2)
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        data = load_data("userdata_mod:make")
        assert isinstance(data, DataSet)
        assert len(data.train) + len(data.val) + len(data.test) == 50
        assert data.num_classes == 2
    finally:
        sys.modules.pop("userdata_mod", None)


def test_unknown_specs_are_rejected_with_what_to_use(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="known: builtin:digits"):
        load_data("builtin:cifar")
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "missing.npz"))
    with pytest.raises(DataError, match="neither builtin:digits"):
        load_data("nothing_here")


def test_batches_cover_every_sample_once_and_shuffle_by_seed(digits: DataSet) -> None:
    split = digits.val
    seen = np.concatenate([labels for _, labels in split.batches(64, shuffle=True, seed=3)])
    assert len(seen) == len(split)
    assert sorted(seen.tolist()) == sorted(split.labels.tolist())
    again = np.concatenate([labels for _, labels in split.batches(64, shuffle=True, seed=3)])
    assert np.array_equal(seen, again)
    assert len(split.subset(10)) == 10


def test_eval_npz_holds_inputs_labels_and_reference(tmp_path: Path, digits: DataSet) -> None:
    ref = np.random.default_rng(0).normal(size=(len(digits.test), 10)).astype(np.float32)
    path = write_eval_npz(digits.test, tmp_path / "eval.npz", reference_outputs=ref, limit=50)
    with np.load(path, allow_pickle=False) as arrays:
        assert sorted(arrays.files) == ["ref", "x", "y"]
        assert arrays["x"].shape == (50, 1, 8, 8)
        assert np.array_equal(arrays["y"], digits.test.labels[:50])
        assert np.allclose(arrays["ref"], ref[:50])


def test_eval_npz_of_a_multi_input_split_uses_numbered_arrays(tmp_path: Path) -> None:
    split = Split((np.zeros((4, 3), np.int64), np.ones((4, 3), np.int64)))
    path = write_eval_npz(split, tmp_path / "eval.npz")
    with np.load(path) as arrays:
        assert sorted(arrays.files) == ["x0", "x1"]
    assert load_data(str(path)).train.inputs[1].dtype == np.int64
