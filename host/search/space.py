"""The per-device search space, and how a trial's parameters become a recipe, a format and a
thread count (a :class:`Plan`).

Parameters (Optuna names):

* ``runtime``: tflite or onnx, among the spec's runtimes the board has;
* ``threads``: 1 to the board's cores (or the spec's list);
* ``precision``: fp32, fp16, int8_dynamic, int8, int8_mixed (full int8 with the ``float_groups``
  most int8-sensitive layer groups kept float);
* ``prune``: the global structured-pruning ratio; ``stage{i}``: each layer group's share of it,
  scaled by how little pruning hurts that group (sensitivity), so sensitive groups lose less, and
  by its share of the MACs, so MAC-heavy groups lose more;
* ``lowrank``: none or the share of each factorized layer's parameters a low-rank (SVD)
  factorization keeps;
* ``student``: none or a distilled student's width (when the spec lists widths).

Every weight-changing plan gets the spec's short recovery (fine-tuning) on the host.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from host.compress import (
    ChannelPrune,
    Distill,
    FineTune,
    Fp16,
    Int8Dynamic,
    Int8Full,
    LowRank,
    Recipe,
    TechniqueConfig,
)
from host.search.sensitivity import GroupSensitivity

if TYPE_CHECKING:
    import optuna

    from host.search.spec import SearchSpec

PRECISION_CHOICES = ("fp32", "fp16", "int8_dynamic", "int8", "int8_mixed")
# What each runtime's exporter writes (host.export): ONNX has no fp16 and no mixed int8.
RUNTIME_PRECISIONS = {
    "tflite": PRECISION_CHOICES,
    "onnx": ("fp32", "int8_dynamic", "int8"),
}
STAGE_SCALES = (0.0, 0.5, 1.0, 1.5)
LOWRANK_RATIOS = (0.3, 0.5, 0.7)


@dataclass(frozen=True)
class Plan:
    """What one trial builds (``recipe`` exported as ``format``) and how a board runs it."""

    recipe: Recipe
    format: str
    threads: int | None
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def build_key(self) -> str:
        """Plans with the same key share one file."""
        text = json.dumps([self.recipe.to_list(), self.format], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def variant(self) -> str:
        """Plans with the same variant are the same measurement on a device."""
        text = json.dumps([self.build_key, self.threads], sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def label(self) -> str:
        """A readable id of the variant: recipe name, runtime, threads, and the variant's hash."""
        threads = f",{self.threads}t" if self.threads else ""
        return f"{self.recipe.name}[{self.format}{threads}]#{self.variant[:6]}"

    @property
    def runtime(self) -> str:
        return self.format

    def describe(self) -> str:
        threads = (
            f", {self.threads} thread{'s' if self.threads != 1 else ''}" if self.threads else ""
        )
        return f"{self.recipe.describe()} [{self.format}{threads}]"


@dataclass(frozen=True)
class DeviceSpace:
    """The search space on one device: its runtimes and thread counts, and the model's groups."""

    spec: SearchSpec
    runtimes: tuple[str, ...]
    threads: tuple[int, ...]
    sensitivity: tuple[GroupSensitivity, ...]

    @classmethod
    def for_device(
        cls,
        spec: SearchSpec,
        sensitivity: list[GroupSensitivity],
        cores: int,
        formats: set[str] | None,
    ) -> DeviceSpace:
        runtimes = tuple(r for r in spec.runtimes if formats is None or r in formats)
        if not runtimes:
            runtimes = spec.runtimes[:1]
        threads = spec.threads or tuple(range(1, max(1, min(cores, 4)) + 1))
        return cls(spec, runtimes, tuple(threads), tuple(sensitivity))

    # -- the stages' shares of the pruning ratio -------------------------------------------
    def stage_weights(self) -> list[float]:
        """Per group, how much of the global ratio it takes: the product of a sensitivity factor
        (0.5 for the group pruning hurts most to 1.5 for a free one) and a MAC factor
        (``sqrt(groups * the group's share of the groups' MACs)``, within 0.5 to 1.5: 1 for an
        average group), so pruning goes where latency is and stays away from what matters. A
        group that cannot be pruned alone gets 0; without MAC counts the MAC factor is 1."""
        drops = [s.prune_drop for s in self.sensitivity]
        known = [max(d, 0.0) for d in drops if d is not None]
        top = max(known, default=0.0)
        prunable = [s for s in self.sensitivity if s.prune_drop is not None]
        total_macs = sum(s.group.macs for s in prunable)
        weights = []
        for s in self.sensitivity:
            if s.prune_drop is None:
                weights.append(0.0)  # cannot be pruned alone
                continue
            sensitivity = 1.0 if top <= 0 else 1.5 - max(s.prune_drop, 0.0) / top
            macs = 1.0
            if total_macs > 0:
                macs = min(1.5, max(0.5, math.sqrt(len(prunable) * s.group.macs / total_macs)))
            weights.append(round(sensitivity * macs, 4))
        return weights

    def int8_order(self) -> list[GroupSensitivity]:
        """Groups from the most int8-sensitive to the least."""
        return sorted(self.sensitivity, key=lambda s: -s.int8_drop)

    def uniform_policies(self) -> list[dict[str, Any]]:
        """The first trials of a fresh study: uniform policies as named recipes apply them
        (full int8 alone, and half the channels pruned at every stage with int8 or fp16), in
        the space's own parameters, on the first runtime and the fewest threads."""
        base: dict[str, Any] = {"runtime": self.runtimes[0], "threads": min(self.threads)}
        stages = {f"stage{i}": 1.0 for i in range(len(self.sensitivity))}
        if self.spec.lowrank:
            base["lowrank"] = "none"
        if self.spec.students:
            base["student"] = "none"
        out = []
        for precision, prune in (("int8", 0.0), ("int8", 0.5), ("fp16", 0.5)):
            if precision not in self.spec.precisions or prune > self.spec.max_prune:
                continue
            policy = {**base, **stages, "precision": precision}
            if self.spec.max_prune:
                policy["prune"] = prune
            out.append(policy)
        return out

    # -- trial -> plan ---------------------------------------------------------------------
    def suggest(self, trial: optuna.trial.BaseTrial) -> Plan:
        spec = self.spec
        runtime = trial.suggest_categorical("runtime", list(self.runtimes))
        threads = int(trial.suggest_categorical("threads", list(self.threads)))
        precision = trial.suggest_categorical("precision", list(spec.precisions))
        if precision not in RUNTIME_PRECISIONS[runtime]:
            precision = "int8" if precision == "int8_mixed" else "fp32"
        steps: list[TechniqueConfig] = []
        weight_steps = False
        if spec.students:
            student = trial.suggest_categorical("student", ["none", *map(str, spec.students)])
            if student != "none":
                steps.append(Distill(student=float(student), epochs=max(1, spec.distill_epochs)))
                weight_steps = True
        prune = (
            trial.suggest_float("prune", 0.0, spec.max_prune, step=0.05) if spec.max_prune else 0.0
        )
        layer_ratios: list[tuple[str, float]] = []
        for index, (group, weight) in enumerate(
            zip(self.sensitivity, self.stage_weights(), strict=True)
        ):
            scale = trial.suggest_categorical(f"stage{index}", list(STAGE_SCALES))
            ratio = min(0.9, round(prune * weight * scale, 3))
            layer_ratios += [(name, ratio) for name in group.group.modules]
        if prune > 0 and any(r > 0 for _, r in layer_ratios):
            steps.append(
                ChannelPrune(ratio=min(0.9, max(prune, 0.01)), layer_ratios=tuple(layer_ratios))
            )
            weight_steps = True
        if spec.lowrank:
            ratio = trial.suggest_categorical("lowrank", ["none", *map(str, LOWRANK_RATIOS)])
            if ratio != "none":
                steps.append(LowRank(ratio=float(ratio)))
                weight_steps = True
        if (
            weight_steps
            and spec.recovery_epochs > 0
            and not (len(steps) == 1 and isinstance(steps[0], Distill))
        ):
            steps.append(FineTune(epochs=spec.recovery_epochs))
        if precision == "fp16":
            steps.append(Fp16())
        elif precision == "int8_dynamic":
            steps.append(Int8Dynamic())
        elif precision == "int8":
            steps.append(Int8Full())
        elif precision == "int8_mixed":
            keep = trial.suggest_int("float_groups", 1, max(1, min(2, len(self.sensitivity))))
            names = tuple(n for s in self.int8_order()[:keep] for n in s.group.modules)
            steps.append(Int8Full(float_layers=names))
        name = _name(trial.params, precision)
        return Plan(Recipe(steps=tuple(steps), name=name), runtime, threads, dict(trial.params))


def _name(params: dict[str, Any], precision: str) -> str:
    parts = []
    if params.get("student", "none") != "none":
        parts.append(f"student{params['student']}")
    if params.get("prune"):
        parts.append(f"prune{params['prune']:g}")
    if params.get("lowrank", "none") != "none":
        parts.append(f"lowrank{params['lowrank']}")
    parts.append(precision)
    return "+".join(parts)


__all__ = ["PRECISION_CHOICES", "DeviceSpace", "Plan"]
