"""Technique configs and recipes: frozen, versioned, validated, round-tripping through JSON.

Each technique is a frozen dataclass with a stable ``name`` and a ``version``; a JSON step looks like
``{"technique": "prune_channels", "version": 1, "ratio": 0.5}``. A :class:`Recipe` is an ordered tuple
of such configs. Parsing is strict (unknown techniques, unknown fields, wrong types and impossible
values are :class:`shared.errors.ConfigError` with a message that says what to change), because a
recipe typo that silently falls back to a default would produce a candidate nobody asked for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, TypeVar

import msgspec

from shared.errors import ConfigError, UnknownEntryError
from shared.registry import Registry

logger = logging.getLogger(__name__)

# Registered technique config classes, keyed by their stable JSON name.
TECHNIQUES: Registry[str, type[TechniqueConfig]] = Registry("technique")

C = TypeVar("C", bound="type[TechniqueConfig]")


def technique(cls: C) -> C:
    """Class decorator: register a technique config under its ``name``."""
    TECHNIQUES.add(cls.name, cls)
    return cls


def _check_fraction(
    technique_name: str,
    field_name: str,
    value: float,
    *,
    allow_zero: bool,
    allow_one: bool,
    hint: str,
) -> None:
    low_ok = value > 0 or (allow_zero and value == 0)
    high_ok = value < 1 or (allow_one and value == 1)
    if not (low_ok and high_ok):
        low = "[0" if allow_zero else "(0"
        high = "1]" if allow_one else "1)"
        raise ConfigError(
            f"{technique_name}.{field_name}={value!r} is impossible: it must lie in {low}, {high}; {hint}"
        )


def _check_positive(
    technique_name: str, field_name: str, value: float, *, allow_zero: bool = False
) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ConfigError(f"{technique_name}.{field_name}={value!r} is invalid: it must be {bound}")


@dataclass(frozen=True)
class TechniqueConfig:
    """Base of every technique config; subclasses are frozen dataclasses registered by name."""

    name: ClassVar[str] = ""
    version: ClassVar[int] = 1
    # One line for `edgetailor compress --list`.
    summary: ClassVar[str] = ""
    # Quantization techniques only choose how the exporter writes the model.
    changes_weights: ClassVar[bool] = True

    def to_dict(self) -> dict[str, Any]:
        body = {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}
        return {"technique": self.name, "version": self.version, **body}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TechniqueConfig:
        return technique_from_dict(data)


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------- pruning


@technique
@dataclass(frozen=True)
class UnstructuredPrune(TechniqueConfig):
    """Zero the smallest-magnitude weights. Dense files and dense kernels do not get smaller or faster."""

    name: ClassVar[str] = "prune_unstructured"
    summary: ClassVar[str] = (
        "magnitude pruning to a sparsity (global or per layer); the dense export is NOT smaller"
    )
    amount: float = 0.5
    scope: Literal["global", "layer"] = "global"

    def __post_init__(self) -> None:
        _check_fraction(
            self.name,
            "amount",
            self.amount,
            allow_zero=False,
            allow_one=False,
            hint="it is the fraction of weights set to zero, e.g. 0.5",
        )


@technique
@dataclass(frozen=True)
class ChannelPrune(TechniqueConfig):
    """Remove whole channels/filters through the dependency graph (torch-pruning)."""

    name: ClassVar[str] = "prune_channels"
    summary: ClassVar[str] = (
        "structured channel pruning (torch-pruning): removes channels, so file, MACs, latency drop"
    )
    ratio: float = 0.5
    importance: Literal["l2", "l1", "bn", "random"] = "l2"
    global_pruning: bool = False
    round_to: int | None = None
    # Transformers: also prune the residual (hidden) width -- embeddings, LayerNorms, patch
    # projection -- not only heads and FFN channels. Needs an output head that keeps its width.
    hidden: bool = False
    # Per-layer ratios, (module name, ratio) pairs: each named module (and the layers inside it)
    # loses that fraction of its channels instead of ``ratio``; 0 leaves it whole.
    layer_ratios: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        _check_fraction(
            self.name,
            "ratio",
            self.ratio,
            allow_zero=False,
            allow_one=False,
            hint="it is the fraction of channels removed, e.g. 0.5 removes half",
        )
        if self.round_to is not None and self.round_to < 1:
            raise ConfigError(f"{self.name}.round_to={self.round_to} must be a positive integer")
        names = [name for name, _ in self.layer_ratios]
        if len(set(names)) != len(names):
            raise ConfigError(f"{self.name}.layer_ratios names a module twice: {names}")
        for name, ratio in self.layer_ratios:
            if not name:
                raise ConfigError(f"{self.name}.layer_ratios has an empty module name")
            _check_fraction(
                self.name,
                f"layer_ratios[{name}]",
                ratio,
                allow_zero=True,
                allow_one=False,
                hint="it is the fraction of that module's channels removed",
            )


# ---------------------------------------------------------------- quantization


@technique
@dataclass(frozen=True)
class Fp16(TechniqueConfig):
    name: ClassVar[str] = "fp16"
    summary: ClassVar[str] = "export weights as float16 (about 2x smaller file)"
    changes_weights: ClassVar[bool] = False


@technique
@dataclass(frozen=True)
class Int8Dynamic(TechniqueConfig):
    name: ClassVar[str] = "int8_dynamic"
    summary: ClassVar[str] = "dynamic-range int8: int8 weights, activations quantized on the fly"
    changes_weights: ClassVar[bool] = False


@technique
@dataclass(frozen=True)
class Int8Full(TechniqueConfig):
    name: ClassVar[str] = "int8"
    summary: ClassVar[str] = (
        "full-integer int8 post-training quantization, per-channel weights, calibrated"
    )
    changes_weights: ClassVar[bool] = False
    calibration_samples: int = 256
    # Mixed precision: modules (by name, with the layers inside them) left in float; the rest is
    # int8. Empty: every op the quantizer knows is int8.
    float_layers: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.calibration_samples < 1:
            raise ConfigError(
                f"{self.name}.calibration_samples={self.calibration_samples} must be >= 1; "
                "a few hundred representative samples are typical"
            )
        if any(not name for name in self.float_layers):
            raise ConfigError(f"{self.name}.float_layers has an empty module name")


@technique
@dataclass(frozen=True)
class QuantAwareTraining(TechniqueConfig):
    name: ClassVar[str] = "qat"
    summary: ClassVar[str] = "quantization-aware training (fake-quant int8), exported as full int8"
    epochs: int = 2
    lr: float = 1e-4
    batch_size: int = 64

    def __post_init__(self) -> None:
        _check_positive(self.name, "epochs", self.epochs)
        _check_positive(self.name, "lr", self.lr)
        _check_positive(self.name, "batch_size", self.batch_size)


# ---------------------------------------------------------------- distillation


@technique
@dataclass(frozen=True)
class Distill(TechniqueConfig):
    """Train a fresh student on the incoming model's softened outputs (plus labels when present),
    and on its intermediate activations through learned adapters (``features``: the weight of that
    term, 0 for outputs only; host.compress.features). Every batch also trains on a mixed copy of
    it towards the teacher's outputs on those mixed inputs (``mixup``: the Beta parameter of the
    per-sample mixing weight, 0 for none; host.train.fit).

    ``student`` is a width multiplier relative to the teacher (``0.5``), a zoo name (``"ds_cnn"``),
    or a model spec (``"builtin:mlp"``, ``"path/file.py:factory"``, ``"pkg.mod:factory"``).
    """

    name: ClassVar[str] = "distill"
    summary: ClassVar[str] = (
        "knowledge distillation into a student (width multiplier, zoo name or factory spec)"
    )
    student: float | str = 0.5
    epochs: int = 10
    lr: float = 3e-3
    temperature: float = 4.0
    alpha: float = 0.7
    batch_size: int = 64
    features: float = 0.1
    mixup: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.student, bool):
            raise ConfigError(f"{self.name}.student must be a width multiplier or a model spec")
        if isinstance(self.student, (int, float)):
            _check_positive(self.name, "student", float(self.student))
        elif not self.student.strip():
            raise ConfigError(f"{self.name}.student is empty; give e.g. 0.5 or 'builtin:mlp'")
        _check_positive(self.name, "epochs", self.epochs)
        _check_positive(self.name, "lr", self.lr)
        _check_positive(self.name, "temperature", self.temperature)
        _check_fraction(
            self.name,
            "alpha",
            self.alpha,
            allow_zero=True,
            allow_one=True,
            hint="it weighs the teacher's soft targets against the labels",
        )
        if not self.features >= 0:
            raise ConfigError(
                f"{self.name}.features must be >= 0 (the weight of feature matching; 0 turns it "
                f"off), got {self.features}"
            )
        if not self.mixup >= 0:
            raise ConfigError(
                f"{self.name}.mixup must be >= 0 (the Beta parameter of the inputs' mixing; 0 "
                f"turns it off), got {self.mixup}"
            )


# ---------------------------------------------------------------- low rank


@technique
@dataclass(frozen=True)
class LowRank(TechniqueConfig):
    """Factorize Linear (SVD) and Conv2d (SVD or Tucker-2) layers.

    Exactly one of ``energy`` (keep the smallest rank retaining this fraction of the squared singular
    values) and ``ratio`` (the fraction of each factorized layer's parameters that remain) is set.
    ``layers`` is ``"all"``, ``"linear"``, ``"conv"``, or a tuple of module names.
    """

    name: ClassVar[str] = "lowrank"
    summary: ClassVar[str] = (
        "low-rank factorization of Linear/Conv2d (svd | tucker2) by energy or parameter ratio"
    )
    method: Literal["svd", "tucker2"] = "svd"
    energy: float | None = None
    # None with no energy means 0.5, so that {"energy": 0.9} alone is a complete step.
    ratio: float | None = None
    layers: Literal["all", "linear", "conv"] | tuple[str, ...] = "all"
    skip_classifier: bool = True

    def __post_init__(self) -> None:
        if self.energy is None and self.ratio is None:
            object.__setattr__(self, "ratio", 0.5)
        if (self.energy is None) == (self.ratio is None):
            raise ConfigError(
                f"{self.name}: set exactly one of energy (e.g. 0.9) and ratio (e.g. 0.5); "
                f"got energy={self.energy!r}, ratio={self.ratio!r}"
            )
        if self.energy is not None:
            _check_fraction(
                self.name,
                "energy",
                self.energy,
                allow_zero=False,
                allow_one=False,
                hint="it is the retained fraction of squared singular values",
            )
        if self.ratio is not None:
            _check_fraction(
                self.name,
                "ratio",
                self.ratio,
                allow_zero=False,
                allow_one=False,
                hint="it is the fraction of a layer's parameters that remain, e.g. 0.5",
            )
        if isinstance(self.layers, tuple) and not self.layers:
            raise ConfigError(f"{self.name}.layers is empty; use 'all' or list module names")


# ---------------------------------------------------------------- recovery


@technique
@dataclass(frozen=True)
class FineTune(TechniqueConfig):
    name: ClassVar[str] = "finetune"
    summary: ClassVar[str] = (
        "fine-tune to recover accuracy (optionally guided by the original model)"
    )
    epochs: int = 3
    lr: float = 3e-3  # 1e-3 left 50%-pruned nets 2-4 points short on digits; 3e-3 recovers them
    batch_size: int = 64
    use_teacher: bool = False

    def __post_init__(self) -> None:
        _check_positive(self.name, "epochs", self.epochs)
        _check_positive(self.name, "lr", self.lr)
        _check_positive(self.name, "batch_size", self.batch_size)


# ---------------------------------------------------------------- parsing


def technique_from_dict(data: Any) -> TechniqueConfig:
    """Build a config from its JSON form; every problem is a ConfigError naming the field."""
    if not isinstance(data, dict):
        raise ConfigError(
            f"a recipe step must be an object like {{'technique': 'fp16'}}, got {data!r}"
        )
    body = dict(data)
    name = body.pop("technique", None)
    if not isinstance(name, str):
        raise ConfigError(f"recipe step {data!r} lacks a 'technique' name")
    try:
        cls = TECHNIQUES.get(name)
    except UnknownEntryError as exc:
        raise ConfigError(f"{exc}; run `edgetailor compress --list` to see them") from exc
    version = body.pop("version", cls.version)
    if not isinstance(version, int) or version < 1 or version > cls.version:
        raise ConfigError(
            f"{name} version {version!r} is not supported here (this build knows version "
            f"{cls.version}); upgrade edgetailor or write the step for version {cls.version}"
        )
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(body) - known)
    if unknown:
        raise ConfigError(
            f"{name} has no field(s) {', '.join(unknown)}; its fields are: "
            f"{', '.join(sorted(known)) or 'none'}"
        )
    try:
        return msgspec.convert(body, cls)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{name}: {exc}") from exc


@dataclass(frozen=True)
class Recipe:
    """An ordered list of technique configs; the empty recipe is the uncompressed fp32 baseline."""

    steps: tuple[TechniqueConfig, ...] = ()
    name: str = ""

    def __post_init__(self) -> None:
        for step in self.steps:
            if not isinstance(step, TechniqueConfig):
                raise ConfigError(f"recipe step {step!r} is not a technique config")
        precision_steps = [
            s.name for s in self.steps if not s.changes_weights or isinstance(s, QuantAwareTraining)
        ]
        if len(precision_steps) > 1:
            raise ConfigError(
                f"recipe {self.name or '(unnamed)'} sets the export precision more than once "
                f"({', '.join(precision_steps)}); keep one of them"
            )
        for i, step in enumerate(self.steps):
            if isinstance(step, QuantAwareTraining) and any(
                later.changes_weights for later in self.steps[i + 1 :]
            ):
                raise ConfigError(
                    "qat must be the last weight-changing step: the fake-quantized graph it trains "
                    "cannot be pruned, factorized or distilled afterwards"
                )

    @classmethod
    def of(cls, *steps: TechniqueConfig, name: str = "") -> Recipe:
        return cls(steps=tuple(steps), name=name)

    def to_list(self) -> list[dict[str, Any]]:
        return [step.to_dict() for step in self.steps]

    def to_json(self) -> str:
        return json.dumps({"name": self.name, "steps": self.to_list()}, indent=2)

    @classmethod
    def from_obj(cls, data: Any, name: str = "") -> Recipe:
        """Accept ``{"name": ..., "steps": [...]}`` or a bare list of steps."""
        if isinstance(data, dict):
            extra = sorted(set(data) - {"name", "steps"})
            if extra:
                raise ConfigError(f"a recipe has only 'name' and 'steps'; unknown key(s): {extra}")
            name = str(data.get("name", name) or name)
            data = data.get("steps", [])
        if not isinstance(data, list):
            raise ConfigError("a recipe is a list of steps or an object with a 'steps' list")
        steps: list[TechniqueConfig] = []
        for index, item in enumerate(data):
            try:
                steps.append(technique_from_dict(item))
            except ConfigError as exc:
                raise ConfigError(f"recipe step {index + 1}: {exc}") from exc
        return cls(steps=tuple(steps), name=name)

    @classmethod
    def from_json(cls, text: str, name: str = "") -> Recipe:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"recipe is not valid JSON: {exc}") from exc
        return cls.from_obj(data, name=name)

    def describe(self) -> str:
        if not self.steps:
            return "fp32 baseline"
        return " -> ".join(_describe_step(s) for s in self.steps)

    @property
    def precision(self) -> str:
        """The export precision this recipe asks for."""
        for step in self.steps:
            if isinstance(step, QuantAwareTraining):
                return "qat_int8"
            if isinstance(step, Fp16):
                return "fp16"
            if isinstance(step, Int8Dynamic):
                return "int8_dynamic"
            if isinstance(step, Int8Full):
                return "int8"
        return "fp32"


def _describe_step(step: TechniqueConfig) -> str:
    all_fields = dataclasses.fields(step)
    # The first field is each technique's main knob (amount, ratio, student, ...): always shown.
    fields = [f for i, f in enumerate(all_fields) if i == 0 or getattr(step, f.name) != f.default]
    if not fields:
        return step.name
    args = ", ".join(f"{f.name}={getattr(step, f.name)!r}" for f in fields)
    return f"{step.name}({args})"


def techniques_summary() -> list[tuple[str, int, str, list[str]]]:
    """(name, version, summary, field=default...) for every registered technique."""
    rows = []
    for name, cls in TECHNIQUES.items():
        fields = [f"{f.name}={f.default!r}" for f in dataclasses.fields(cls)]
        rows.append((name, cls.version, cls.summary, fields))
    return rows


def recipe_of(
    steps: Iterable[TechniqueConfig] | Sequence[TechniqueConfig], name: str = ""
) -> Recipe:
    return Recipe(steps=tuple(steps), name=name)


__all__ = [
    "TECHNIQUES",
    "ChannelPrune",
    "Distill",
    "FineTune",
    "Fp16",
    "Int8Dynamic",
    "Int8Full",
    "LowRank",
    "QuantAwareTraining",
    "Recipe",
    "TechniqueConfig",
    "UnstructuredPrune",
    "recipe_of",
    "technique",
    "technique_from_dict",
    "techniques_summary",
]
