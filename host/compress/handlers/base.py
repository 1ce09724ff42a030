"""The registry mapping each technique config class to its handler, and helpers handlers share."""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from host.compress.config import TechniqueConfig
from shared.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from host.compress.context import CompressContext
    from host.models import ModelBundle

logger = logging.getLogger(__name__)

Handler = Callable[["ModelBundle", TechniqueConfig, "CompressContext"], "ModelBundle"]
HANDLERS: Registry[str, Handler] = Registry("technique handler")

H = TypeVar("H", bound=Handler)


def handles(config_cls: type[TechniqueConfig]) -> Callable[[H], H]:
    """Register the decorated function as the handler of ``config_cls``."""

    def decorator(fn: H) -> H:
        HANDLERS.add(config_cls.name, fn)
        return fn

    return decorator


def with_module(bundle: ModelBundle, module: nn.Module) -> ModelBundle:
    return dataclasses.replace(bundle, module=module)


def cpu_copy(module: nn.Module) -> nn.Module:
    """A deep copy on the CPU: handlers never mutate their input, and graph surgery runs on CPU."""
    return copy.deepcopy(module).cpu()


def param_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _output_tensors(out: object) -> list[torch.Tensor]:
    import torch

    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for o in out for t in _output_tensors(o)]
    if isinstance(out, dict):
        return [t for o in out.values() for t in _output_tensors(o)]
    return []


def head_modules(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> list[nn.Module]:
    """The head of every output: for each output tensor, the Linear/Conv layer nearest to it in
    the autograd graph of a forward pass (the classifier of class scores, the regressor of boxes);
    in output order, without repeats.

    Found by what each output is computed from, not by definition or execution order: a model
    may define its head before its body, and a model with two outputs runs two heads, the first
    of which is not the last layer executed.
    """
    import torch
    from torch import nn

    layers = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
    by_grad_fn: dict[object, nn.Module] = {}
    order: list[nn.Module] = []

    def record(layer: nn.Module, _inputs: object, out: object) -> None:
        order.append(layer)
        for tensor in _output_tensors(out):
            if tensor.grad_fn is not None:
                by_grad_fn[tensor.grad_fn] = layer

    hooks = [m.register_forward_hook(record) for m in module.modules() if isinstance(m, layers)]
    was_training = module.training
    try:
        module.eval()
        with torch.enable_grad():
            outputs = _output_tensors(module(*example_inputs))
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    heads: list[nn.Module] = []
    for output in outputs:
        head = _nearest_layer(output.grad_fn, by_grad_fn)
        if head is not None and not any(head is h for h in heads):
            heads.append(head)
    if not heads and order:
        heads.append(order[-1])
    return heads


def _nearest_layer(grad_fn: object, by_grad_fn: dict[object, nn.Module]) -> nn.Module | None:
    """Breadth-first from an output's grad_fn to the first recorded layer output."""
    seen: set[int] = set()
    frontier = [grad_fn] if grad_fn is not None else []
    while frontier:
        following = []
        for fn in frontier:
            if id(fn) in seen:
                continue
            seen.add(id(fn))
            if fn in by_grad_fn:
                return by_grad_fn[fn]
            following += [nxt for nxt, _ in getattr(fn, "next_functions", ()) if nxt is not None]
        frontier = following
    return None


def head_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> nn.Module | None:
    """The head of the first output (see :func:`head_modules`)."""
    heads = head_modules(module, example_inputs)
    return heads[0] if heads else None
