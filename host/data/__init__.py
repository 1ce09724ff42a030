"""Data specs: ``builtin:digits``, ``file.npz``, an image folder, or ``module:factory`` -> :class:`DataSet`.

A :class:`Split` holds one array per model input (``inputs``) and optional ``labels``: integer
class labels, or real-valued targets of any per-sample shape (regression, boxes); several target
arrays (``y0, y1, ...``) are its ``labels`` and ``more_labels``, and a ``--metric`` receives them
all. Without labels, metrics are fidelity to the uncompressed model. :func:`write_eval_npz` writes the
evaluation set a device benchmarks with (``x`` or ``x0, x1, ...``, optional ``y`` and ``ref``, and
the ``task`` both sides score it for).

npz files hold ``x`` (one input) or ``x0, x1, ...`` (several), optional ``y`` (or ``y0, y1, ...``
for several targets); they are split into
train/val/test with the seed (70/15/15). A file may instead hold ready splits as
``train_x``/``train_y``, ``val_x``..., ``test_x``... (or ``train_x0`` ... for several inputs).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from host.errors import DataError
from shared.fsutil import atomic_write

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".ppm", ".tif", ".tiff", ".webp")
SPLIT_FRACTIONS = (0.7, 0.15, 0.15)


@dataclass(frozen=True)
class Split:
    """Samples along axis 0 of every input array, with optional labels (class labels or real
    targets) and, for several target arrays, the ones after the first in ``more_labels``."""

    inputs: tuple[np.ndarray, ...]
    labels: np.ndarray | None = None
    more_labels: tuple[np.ndarray, ...] = ()

    def __post_init__(self) -> None:
        if not self.inputs:
            raise DataError("a split needs at least one input array")
        lengths = {len(a) for a in self.inputs}
        if len(lengths) != 1:
            raise DataError(
                "input arrays have different numbers of samples "
                f"({', '.join(str(len(a)) for a in self.inputs)}); every x0, x1, ... needs the same "
                "length along axis 0"
            )
        if self.labels is not None and len(self.labels) != len(self.inputs[0]):
            raise DataError(
                f"{len(self.labels)} labels for {len(self.inputs[0])} samples; y must have one label "
                "per sample"
            )
        if self.more_labels and self.labels is None:
            raise DataError("more target arrays but no first one (y0)")
        for i, extra in enumerate(self.more_labels, start=1):
            if len(extra) != len(self.inputs[0]):
                raise DataError(
                    f"target y{i} has {len(extra)} rows for {len(self.inputs[0])} samples; every "
                    "y0, y1, ... needs one row per sample"
                )

    def __len__(self) -> int:
        return len(self.inputs[0])

    def batches(
        self, size: int = 64, shuffle: bool = False, seed: int = 0
    ) -> Iterator[tuple[tuple[np.ndarray, ...], np.ndarray | None]]:
        """Yield ``(inputs, labels)`` in batches of ``size`` (the last may be shorter)."""
        if size < 1:
            raise DataError(f"batch size must be at least 1, got {size}")
        order = np.arange(len(self))
        if shuffle:
            order = np.random.default_rng(seed).permutation(len(self))
        for start in range(0, len(self), size):
            idx = order[start : start + size]
            labels = None if self.labels is None else self.labels[idx]
            yield tuple(a[idx] for a in self.inputs), labels

    def subset(self, n: int) -> Split:
        """The first ``n`` samples (all of them if fewer)."""
        return self.take(np.arange(min(max(n, 0), len(self))))

    def take(self, idx: np.ndarray) -> Split:
        return Split(
            tuple(a[idx] for a in self.inputs),
            None if self.labels is None else self.labels[idx],
            tuple(a[idx] for a in self.more_labels),
        )

    @property
    def has_labels(self) -> bool:
        return self.labels is not None

    @property
    def class_labels(self) -> bool:
        """Whether the labels are one integer class per sample."""
        return self.labels is not None and self.labels.ndim == 1 and self.labels.dtype.kind in "iu"

    @property
    def targets(self) -> np.ndarray | list[np.ndarray] | None:
        """What a user metric compares outputs with: the labels, or the list of every target
        array when there are several."""
        if self.labels is None or not self.more_labels:
            return self.labels
        return [self.labels, *self.more_labels]


@dataclass(frozen=True)
class DataSet:
    name: str
    train: Split
    val: Split
    test: Split

    @property
    def has_labels(self) -> bool:
        return self.train.labels is not None

    @property
    def num_classes(self) -> int | None:
        """One more than the largest class label; None without integer class labels."""
        if not self.train.class_labels:
            return None
        return int(
            max(
                s.labels.max()
                for s in (self.train, self.val, self.test)
                if s.labels is not None and s.class_labels and len(s)
            )
            + 1
        )


def load_data(spec: str, seed: int = 0, input_layout: str = "NCHW") -> DataSet:
    """Resolve a data spec; errors are :class:`host.errors.DataError` saying what to fix."""
    if input_layout not in ("NCHW", "NHWC"):
        raise DataError(f"input_layout must be NCHW or NHWC, got {input_layout!r}")
    if not isinstance(spec, str) or not spec.strip():
        raise DataError(
            "empty data spec: use builtin:digits, file.npz, an image folder or module:factory"
        )
    spec = spec.strip()
    if spec.startswith("builtin:"):
        name = spec.removeprefix("builtin:")
        if name != "digits":
            raise DataError(f"unknown builtin data set {name!r}; known: builtin:digits")
        data = _digits(seed)
    elif spec.endswith(".npz"):
        data = _npz(Path(spec), seed)
    elif Path(spec).is_dir():
        data = _image_folder(Path(spec), seed)
    elif ":" in spec:
        data = _factory(spec, seed)
    else:
        raise DataError(
            f"data spec {spec!r} is neither builtin:digits, an existing .npz file, an image folder "
            "nor module:factory"
        )
    return _to_layout(data, input_layout)


def split_arrays(
    name: str,
    inputs: tuple[np.ndarray, ...],
    labels: np.ndarray | None,
    seed: int,
    more_labels: tuple[np.ndarray, ...] = (),
) -> DataSet:
    """Split arrays into train/val/test (70/15/15) with a permutation fixed by ``seed``."""
    whole = Split(inputs, labels, more_labels)
    n = len(whole)
    if n < 3:
        raise DataError(f"{name}: {n} samples is too few to split into train/val/test (need 3+)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = max(1, round(n * SPLIT_FRACTIONS[1]))
    n_test = max(1, round(n * SPLIT_FRACTIONS[2]))
    n_train = n - n_val - n_test
    return DataSet(
        name,
        whole.take(order[:n_train]),
        whole.take(order[n_train : n_train + n_val]),
        whole.take(order[n_train + n_val :]),
    )


def _digits(seed: int) -> DataSet:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images.astype(np.float32) / 16.0)[:, None, :, :]
    return split_arrays("digits", (images,), digits.target.astype(np.int64), seed)


def _clean_inputs(arrays: list[np.ndarray], source: str) -> tuple[np.ndarray, ...]:
    cleaned = []
    for i, a in enumerate(arrays):
        if a.dtype == np.float64:
            a = a.astype(np.float32)
        if a.dtype.kind not in "fiub":
            raise DataError(f"{source}: input {i} has dtype {a.dtype}; use numeric arrays")
        if a.ndim < 1:
            raise DataError(f"{source}: input {i} is a scalar; put samples along axis 0")
        cleaned.append(a)
    return tuple(cleaned)


def _clean_labels(y: Any, source: str, name: str = "y") -> np.ndarray | None:
    """Integer labels as int64, real-valued targets (any per-sample shape) as float32."""
    if y is None:
        return None
    y = np.asarray(y)
    if y.ndim < 1 or y.dtype.kind not in "iubf":
        raise DataError(
            f"{source}: targets {name} must be a numeric array with one row per sample (integer "
            f"class labels, or real values for regression), got {y.dtype} {y.shape}"
        )
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{source}: targets {name} contain NaN or infinite values")
        return y.astype(np.float32)
    return y.astype(np.int64)


def labels_from_mapping(
    arrays: Any, source: str, prefix: str = ""
) -> tuple[np.ndarray | None, tuple[np.ndarray, ...]]:
    """(first target, the others) from ``y`` or ``y0, y1, ...`` (with ``prefix``)."""
    keys = list(arrays.keys())
    if f"{prefix}y" in keys:
        return _clean_labels(arrays[f"{prefix}y"], source, f"{prefix}y"), ()
    numbered = []
    i = 0
    while f"{prefix}y{i}" in keys:
        numbered.append(_clean_labels(arrays[f"{prefix}y{i}"], source, f"{prefix}y{i}"))
        i += 1
    if not numbered:
        return None, ()
    return numbered[0], tuple(numbered[1:])


def inputs_from_mapping(
    arrays: Any, source: str, prefix: str = ""
) -> tuple[np.ndarray, ...] | None:
    keys = list(arrays.keys())
    if f"{prefix}x" in keys:
        return _clean_inputs([np.asarray(arrays[f"{prefix}x"])], source)
    numbered = []
    i = 0
    while f"{prefix}x{i}" in keys:
        numbered.append(np.asarray(arrays[f"{prefix}x{i}"]))
        i += 1
    return _clean_inputs(numbered, source) if numbered else None


def _npz(path: Path, seed: int) -> DataSet:
    if not path.is_file():
        raise DataError(f"data file {path} does not exist")
    try:
        arrays = dict(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read {path} as npz: {exc}") from exc
    source = str(path)
    if "train_x" in arrays or "train_x0" in arrays:
        splits = []
        for part in ("train", "val", "test"):
            inputs = inputs_from_mapping(arrays, source, prefix=f"{part}_")
            if inputs is None:
                raise DataError(f"{source} has train_x but no {part}_x / {part}_x0")
            labels, more = labels_from_mapping(arrays, source, prefix=f"{part}_")
            splits.append(Split(inputs, labels, more))
        _check_same_sample_shapes(splits, source)
        return DataSet(path.stem, *splits)
    inputs = inputs_from_mapping(arrays, source)
    if inputs is None:
        raise DataError(
            f"{source} holds {', '.join(sorted(arrays)) or 'no arrays'}; it needs x (one input) or "
            "x0, x1, ... (several inputs), optional y (or y0, y1, ... for several targets)"
        )
    labels, more = labels_from_mapping(arrays, source)
    return split_arrays(path.stem, inputs, labels, seed, more)


def _check_same_sample_shapes(splits: list[Split], source: str) -> None:
    first = splits[0]
    for split in splits[1:]:
        if len(split.inputs) != len(first.inputs) or any(
            a.shape[1:] != b.shape[1:] for a, b in zip(split.inputs, first.inputs)
        ):
            raise DataError(f"{source}: the splits' inputs differ in count or per-sample shape")


def _image_folder(root: Path, seed: int) -> DataSet:
    try:
        from PIL import Image
    except ImportError as exc:
        raise DataError("reading an image folder needs Pillow (pip install pillow)") from exc
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if len(classes) < 2:
        raise DataError(f"image folder {root} needs one sub-folder per class (at least two)")
    files: list[tuple[Path, int]] = []
    for label, cls in enumerate(classes):
        for f in sorted((root / cls).iterdir()):
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, label))
    if not files:
        raise DataError(f"image folder {root} has no images ({', '.join(IMAGE_SUFFIXES)})")
    modes = set()
    with Image.open(files[0][0]) as first:
        size = first.size
    images = []
    for f, _ in files:
        try:
            with Image.open(f) as img:
                modes.add(img.mode)
                images.append(img)
                img.load()
        except OSError as exc:
            raise DataError(f"cannot read image {f}: {exc}") from exc
    grey = all(m in ("L", "1", "I", "I;16", "F") for m in modes)
    arrays = []
    for img in images:
        img = img.convert("L" if grey else "RGB")
        if img.size != size:
            img = img.resize(size)
        a = np.asarray(img, dtype=np.float32) / 255.0
        arrays.append(a[None, :, :] if grey else a.transpose(2, 0, 1))
    x = np.stack(arrays)
    y = np.array([label for _, label in files], dtype=np.int64)
    logger.info("image folder %s: %d images, classes %s", root, len(y), classes)
    return split_arrays(root.name, (x,), y, seed)


def _factory(spec: str, seed: int) -> DataSet:
    from host.errors import ConfigError
    from host.models import resolve_factory

    try:
        factory = resolve_factory(spec, what="data")
    except ConfigError as exc:
        raise DataError(str(exc)) from exc
    import inspect

    try:
        params = inspect.signature(factory).parameters
        result = factory(seed=seed) if "seed" in params else factory()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"data factory {spec!r} failed: {exc}") from exc
    if isinstance(result, DataSet):
        return result
    if isinstance(result, dict):
        inputs = inputs_from_mapping(result, spec)
        if inputs is None:
            raise DataError(f"data factory {spec!r} returned a dict without x or x0, x1, ...")
        labels, more = labels_from_mapping(result, spec)
        return split_arrays(spec, inputs, labels, seed, more)
    if isinstance(result, tuple) and len(result) == 2:
        x, y = result
        inputs = tuple(x) if isinstance(x, (tuple, list)) else (x,)
        return split_arrays(
            spec, _clean_inputs([np.asarray(a) for a in inputs], spec), _clean_labels(y, spec), seed
        )
    raise DataError(
        f"data factory {spec!r} returned {type(result).__name__}; return a DataSet, (x, y) or a "
        "dict with x / x0, x1, ... and optional y"
    )


def _to_layout(data: DataSet, layout: str) -> DataSet:
    if layout == "NCHW":
        return data

    def convert(split: Split) -> Split:
        inputs = tuple(
            np.ascontiguousarray(a.transpose(0, 2, 3, 1)) if a.ndim == 4 else a
            for a in split.inputs
        )
        return Split(inputs, split.labels, split.more_labels)

    return DataSet(data.name, convert(data.train), convert(data.val), convert(data.test))


def write_eval_npz(
    split: Split,
    path: str | Path,
    reference_outputs: np.ndarray | None = None,
    limit: int | None = None,
    task: str | None = None,
) -> Path:
    """Write the eval set a device benchmarks with: ``x``/``x0..``, optional ``y`` (and ``y1``,
    ``y2``... for more target arrays) and ``ref``, and the ``task`` it is scored for (a one-element
    string array: no pickle needed to read it)."""
    if limit is not None:
        split = split.subset(limit)
    arrays: dict[str, np.ndarray] = {}
    if len(split.inputs) == 1:
        arrays["x"] = split.inputs[0]
    else:
        arrays.update({f"x{i}": a for i, a in enumerate(split.inputs)})
    if split.labels is not None:
        arrays["y"] = split.labels
        arrays.update({f"y{i}": a for i, a in enumerate(split.more_labels, start=1)})
    if reference_outputs is not None:
        ref = np.asarray(reference_outputs)
        if len(ref) < len(split):
            raise DataError(f"{len(ref)} reference outputs for {len(split)} eval samples")
        arrays["ref"] = ref[: len(split)].astype(np.float32)
    if task is not None:
        arrays["task"] = np.array([task])
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    # Temporary sibling, then rename: a campaign resumes with an existing eval.npz as it is, so an
    # interrupted write must never leave a truncated one under the final name.
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write(out, buffer.getvalue())
    return out


__all__ = ["DataSet", "Split", "load_data", "split_arrays", "write_eval_npz"]
