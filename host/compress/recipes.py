"""Named recipes (``edgetailor compress --recipe NAME``) and named search spaces for campaigns.

A search space is a list of stages, each a list of labelled alternatives; expanding it takes one
alternative per stage (the cartesian product) and concatenates their steps into a recipe. Recipes
that would set the export precision twice cannot arise because precision lives in one stage.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass
from pathlib import Path

from host.compress.config import (
    ChannelPrune,
    Distill,
    FineTune,
    Fp16,
    Int8Dynamic,
    Int8Full,
    LowRank,
    QuantAwareTraining,
    Recipe,
    TechniqueConfig,
    UnstructuredPrune,
)
from shared.errors import ConfigError
from shared.registry import Registry

logger = logging.getLogger(__name__)

NAMED_RECIPES: Registry[str, Recipe] = Registry("named recipe")


def _named(name: str, *steps: TechniqueConfig) -> None:
    NAMED_RECIPES.add(name, Recipe(steps=tuple(steps), name=name))


_named("baseline")
_named("fp16", Fp16())
_named("int8_dynamic", Int8Dynamic())
_named("int8", Int8Full())
_named("qat", QuantAwareTraining(epochs=2))
_named("sparse50", UnstructuredPrune(amount=0.5))
# Halving every layer's channels is the same cut as distill_half's pruned student, and recovers as
# much only given as long: without labels, 5 epochs towards the teacher's softened outputs left
# ResNet-18 4.8 and a ViT 7.8 points short where 15 (distill_half) recovered fully. Halving every
# layer's parameters by rank is as deep a cut (transformers' MobileNetV2 kept 10% agreement right
# after it): 3 epochs left it 9.7 points short where 15 recovered fully (bench.models, 0.5 scale).
RECOVERY_EPOCHS = 15
_named("prune50_ft", ChannelPrune(ratio=0.5), FineTune(epochs=RECOVERY_EPOCHS))
_named(
    "prune50_ft_int8",
    ChannelPrune(ratio=0.5),
    FineTune(epochs=RECOVERY_EPOCHS),
    Int8Full(),
)
_named("distill_half", Distill(student=0.5, epochs=15))
_named("distill_half_int8", Distill(student=0.5, epochs=15), Int8Full())
_named("lowrank_ft", LowRank(ratio=0.5), FineTune(epochs=RECOVERY_EPOCHS))
_named("lowrank_ft_fp16", LowRank(ratio=0.5), FineTune(epochs=RECOVERY_EPOCHS), Fp16())
_named(
    "tucker_ft_int8_dynamic",
    LowRank(method="tucker2", ratio=0.5),
    FineTune(epochs=RECOVERY_EPOCHS),
    Int8Dynamic(),
)


def resolve_recipe(
    spec: Recipe | str | list[TechniqueConfig] | tuple[TechniqueConfig, ...],
) -> Recipe:
    """A Recipe from itself, a list of configs, a named recipe, or a path to a JSON file."""
    if isinstance(spec, Recipe):
        return spec
    if isinstance(spec, (list, tuple)):
        return Recipe(steps=tuple(spec))
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(
            "a recipe is a name (see `edgetailor compress --list`) or a JSON file path"
        )
    if spec in NAMED_RECIPES:
        return NAMED_RECIPES.get(spec)
    path = Path(spec)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"recipe file {spec} does not exist")
        return Recipe.from_json(path.read_text(), name=path.stem)
    raise ConfigError(
        f"unknown recipe {spec!r}: not a named recipe ({', '.join(NAMED_RECIPES)}) nor a .json file"
    )


@dataclass(frozen=True)
class Choice:
    """One labelled alternative of a search-space stage; no steps means "skip this stage"."""

    label: str
    steps: tuple[TechniqueConfig, ...] = ()


@dataclass(frozen=True)
class SearchSpace:
    name: str
    description: str
    stages: tuple[tuple[Choice, ...], ...]

    def expand(self) -> list[Recipe]:
        recipes = []
        for combo in itertools.product(*self.stages):
            labels = [c.label for c in combo if c.steps]
            steps = tuple(step for c in combo for step in c.steps)
            recipes.append(Recipe(steps=steps, name="+".join(labels) or "baseline"))
        return recipes

    def __len__(self) -> int:
        size = 1
        for stage in self.stages:
            size *= len(stage)
        return size


SEARCH_SPACES: Registry[str, SearchSpace] = Registry("search space")

_PRECISIONS = (
    Choice("fp32"),
    Choice("fp16", (Fp16(),)),
    Choice("int8dyn", (Int8Dynamic(),)),
    Choice("int8", (Int8Full(),)),
)

SEARCH_SPACES.add(
    "quantize",
    SearchSpace(
        "quantize",
        "every export precision of the unchanged model",
        (_PRECISIONS,),
    ),
)
SEARCH_SPACES.add(
    "prune_quantize",
    SearchSpace(
        "prune_quantize",
        "channel pruning at 0/25/50/70% (fine-tuned) x every precision",
        (
            (
                Choice("dense"),
                Choice("prune25", (ChannelPrune(ratio=0.25), FineTune(epochs=3))),
                Choice("prune50", (ChannelPrune(ratio=0.5), FineTune(epochs=5))),
                Choice("prune70", (ChannelPrune(ratio=0.7), FineTune(epochs=8))),
            ),
            _PRECISIONS,
        ),
    ),
)
SEARCH_SPACES.add(
    "default",
    SearchSpace(
        "default",
        "one of each family (none, prune, distill, low-rank) x fp32 / dynamic int8 / int8",
        (
            (
                Choice("orig"),
                Choice("prune50", (ChannelPrune(ratio=0.5), FineTune(epochs=5))),
                Choice("distill50", (Distill(student=0.5, epochs=15),)),
                Choice("lowrank50", (LowRank(ratio=0.5), FineTune(epochs=3))),
            ),
            (Choice("fp32"), Choice("int8dyn", (Int8Dynamic(),)), Choice("int8", (Int8Full(),))),
        ),
    ),
)


__all__ = ["NAMED_RECIPES", "SEARCH_SPACES", "Choice", "SearchSpace", "resolve_recipe"]
