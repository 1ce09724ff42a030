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


def head_module(module: nn.Module, example_inputs: tuple[torch.Tensor, ...]) -> nn.Module | None:
    """The last Linear/Conv layer executed in a forward pass: the classifier/regression head.

    Found by execution order rather than definition order, because a module may define its head
    before its body.
    """
    import torch
    from torch import nn

    order: list[nn.Module] = []
    hooks = [
        m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
        for m in module.modules()
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))
    ]
    was_training = module.training
    try:
        module.eval()
        with torch.no_grad():
            module(*example_inputs)
    finally:
        for hook in hooks:
            hook.remove()
        module.train(was_training)
    return order[-1] if order else None
