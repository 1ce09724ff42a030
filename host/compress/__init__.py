"""Compression toolkit: technique configs, their handlers, recipes, search spaces and compress().

Four families, combinable in one recipe: pruning (unstructured magnitude, structured channels),
quantization (fp16, dynamic int8, full int8, QAT), knowledge distillation, and low-rank
factorization, plus fine-tuning to recover accuracy. A recipe is an ordered tuple of frozen,
versioned configs that round-trips through JSON::

    from host.compress import ChannelPrune, FineTune, Int8Full, Recipe, compress
    result = compress("builtin:digits_cnn", "builtin:digits",
                      Recipe.of(ChannelPrune(0.5), FineTune(epochs=5), Int8Full()), "out/")

Add a technique by registering a config with ``@technique`` and a handler with ``@handles``.
"""

from __future__ import annotations

from host.compress.api import CompressResult, apply_recipe, compress
from host.compress.config import (
    TECHNIQUES,
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
    technique,
    technique_from_dict,
    techniques_summary,
)
from host.compress.context import CompressContext, StepRecord
from host.compress.handlers import HANDLERS, handles
from host.compress.recipes import NAMED_RECIPES, SEARCH_SPACES, Choice, SearchSpace, resolve_recipe

__all__ = [
    "HANDLERS",
    "NAMED_RECIPES",
    "SEARCH_SPACES",
    "TECHNIQUES",
    "ChannelPrune",
    "Choice",
    "CompressContext",
    "CompressResult",
    "Distill",
    "FineTune",
    "Fp16",
    "Int8Dynamic",
    "Int8Full",
    "LowRank",
    "QuantAwareTraining",
    "Recipe",
    "SearchSpace",
    "StepRecord",
    "TechniqueConfig",
    "UnstructuredPrune",
    "apply_recipe",
    "compress",
    "handles",
    "resolve_recipe",
    "technique",
    "technique_from_dict",
    "techniques_summary",
]
