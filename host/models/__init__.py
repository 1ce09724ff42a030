"""Model specs: turn ``builtin:NAME``, ``path/file.py:factory`` or ``pkg.module:factory`` into a
:class:`ModelBundle` (module, example inputs, task).

A user factory may return a :class:`ModelBundle`, a ``(module, example_inputs)`` pair, a
``(module, example_inputs, info)`` triple where ``info`` is a dict with optional ``task``,
``num_classes`` and ``name``, or a bare ``nn.Module`` -- as torchvision's and timm's factories do,
unchanged: ``torchvision.models:resnet18?num_classes=10&input_shape=[3,64,64]``. ``input_shape``
(without the batch) then gives the example input; it is passed to a factory only when the factory
names it. Keyword arguments given to :func:`load_model` are passed on to the
factory when its signature accepts them (``width``, ``num_classes``, ``input_shape``, ...).
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from host.errors import ModelSpecError
from shared.registry import Registry

logger = logging.getLogger(__name__)

Task = Literal["classification", "regression", "embedding"]
TASKS: tuple[str, ...] = ("classification", "regression", "embedding")


@dataclass
class ModelBundle:
    """A model with what it takes to run, train, evaluate and export it."""

    module: nn.Module
    example_inputs: tuple[torch.Tensor, ...]
    name: str
    task: Task
    num_classes: int | None
    factory: str
    width: float = 1.0
    task_inferred: bool = False  # the task is a guess from the output shape, not given


MODELS: Registry[str, Callable[..., ModelBundle]] = Registry("builtin model")


INIT_SEED = 0


def load_model(spec: str, **kwargs: Any) -> ModelBundle:
    """Resolve a model spec; errors are :class:`host.errors.ModelSpecError` saying what to fix."""
    from host.models import hf, zoo  # noqa: F401 - registers the builtins

    if not isinstance(spec, str) or not spec.strip():
        raise ModelSpecError(
            "empty model spec: use builtin:NAME, path/file.py:factory or pkg.module:factory"
        )
    spec = spec.strip()
    base, params = split_spec_params(spec)
    merged = {**params, **kwargs}  # explicit keyword arguments win over the spec's own
    if base.startswith("builtin:"):
        name = base.removeprefix("builtin:")
        if name not in MODELS:
            known = ", ".join(f"builtin:{n}" for n in MODELS)
            raise ModelSpecError(f"unknown builtin model {name!r}; known: {known}")
        factory = MODELS.get(name)
        _check_params(factory, params, spec)
        bundle = _call(factory, merged, spec)
    else:
        factory = resolve_factory(base, what="model")
        _check_params(factory, params, spec)
        bundle = _to_bundle(_call(factory, merged, spec), spec, merged)
        bundle = unwrap_output_object(bundle, spec)
    if params:
        bundle = dataclasses.replace(bundle, factory=spec)  # so the same model can be built again
    return _check_bundle(bundle, spec)


def check_model_spec(spec: str) -> None:
    """What :func:`load_model` checks before it builds anything, without building the model: the
    builtin's name (NotFoundError when unknown), or that the factory imports and is callable, and
    that it takes the spec's ``?key=value`` parameters."""
    from host.errors import NotFoundError
    from host.models import hf, zoo  # noqa: F401 - registers the builtins

    base, params = split_spec_params(spec.strip())
    if base.startswith("builtin:"):
        name = base.removeprefix("builtin:")
        if name not in MODELS:
            known = ", ".join(f"builtin:{n}" for n in MODELS)
            raise NotFoundError(f"unknown builtin model {name[:80]!r}; known: {known}")
        factory = MODELS.get(name)
    else:
        factory = resolve_factory(base, what="model")
    _check_params(factory, params, spec)


def split_spec_params(spec: str) -> tuple[str, dict[str, Any]]:
    """``builtin:mobilenetv2?width=0.5&num_classes=4`` -> ("builtin:mobilenetv2", {...}).

    Values are read as JSON where they parse (numbers, true/false, lists), else kept as text.
    """
    base, sep, query = spec.partition("?")
    if not sep:
        return spec, {}
    params: dict[str, Any] = {}
    for item in filter(None, query.split("&")):
        key, eq, raw = item.partition("=")
        if not eq or not key.isidentifier():
            raise ModelSpecError(
                f"model spec {spec!r}: {item!r} is not KEY=VALUE (e.g. builtin:digits_cnn?width=2)"
            )
        try:
            params[key] = json.loads(raw)
        except json.JSONDecodeError:
            params[key] = raw
    return base, params


def _check_params(factory: Callable[..., Any], params: dict[str, Any], spec: str) -> None:
    accepted = inspect.signature(factory).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values()):
        return
    unknown = sorted(set(params) - set(accepted) - {"input_shape"})
    if unknown:
        raise ModelSpecError(
            f"model spec {spec!r}: the factory takes no {', '.join(unknown)}; it takes "
            f"{', '.join(accepted) or 'no arguments'}"
        )


def _with_working_directory_on_path() -> None:
    """Let ``pkg.module:factory`` name a package in the directory the command runs from.

    ``python -m`` puts it on ``sys.path``; an installed console script (``edgetailor``) puts its
    own bin directory there instead, so a user's ``mymodels.nets:build`` would not import from
    their project root. Appended, not prepended as ``python -m`` does: an installed package of the
    same name wins over a folder that happens to share its name.
    """
    try:
        cwd = os.getcwd()
    except OSError:  # the directory was removed under the running process
        return
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)


def resolve_factory(spec: str, *, what: str) -> Callable[..., Any]:
    """``path/file.py:name`` or ``pkg.module:name`` -> the callable it names."""
    from host.errors import ConfigError

    error = ModelSpecError if what == "model" else ConfigError
    if ":" not in spec:
        raise error(
            f"{what} spec {spec!r} has no ':factory' part; use path/file.py:factory, "
            "pkg.module:factory or builtin:NAME"
        )
    target, _, attr = spec.rpartition(":")
    if not attr.isidentifier():
        raise error(f"{what} spec {spec!r}: {attr!r} is not a Python name")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target)
        if not path.is_file():
            raise error(f"{what} spec {spec!r}: file {path} does not exist")
        mod_name = f"_edgetailor_user_{abs(hash(str(path.resolve())))}"
        module_spec = importlib.util.spec_from_file_location(mod_name, path)
        if module_spec is None or module_spec.loader is None:
            raise error(f"{what} spec {spec!r}: cannot load {path} as Python")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[mod_name] = module
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(mod_name, None)
            raise error(f"{what} spec {spec!r}: importing {path} failed: {exc}") from exc
    else:
        _with_working_directory_on_path()
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise error(
                f"{what} spec {spec!r}: cannot import module {target!r} ({exc}); check the name "
                "and that it is on PYTHONPATH or in the directory you run edgetailor in"
            ) from exc
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        raise error(f"{what} spec {spec!r}: {target} has no callable {attr!r}")
    return factory


def _call(factory: Callable[..., Any], kwargs: dict[str, Any], spec: str) -> Any:
    params = inspect.signature(factory).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    # input_shape shapes the example input of a factory that returns a bare module; a factory
    # taking **kwargs (timm.create_model) would hand it to the model's constructor.
    accepted = {
        k: v for k, v in kwargs.items() if k in params or (takes_any and k != "input_shape")
    }
    ignored = sorted(set(kwargs) - set(accepted))
    if ignored:
        logger.debug("factory for %s does not take %s; ignored", spec, ", ".join(ignored))
    import torch

    try:
        # Initial weights from a fixed seed: otherwise they depend on whatever consumed the global
        # RNG before (imports included), and so does every accuracy figure built on them.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(INIT_SEED)
            return factory(**accepted)
    except ModelSpecError:
        raise
    except Exception as exc:  # user code: whatever it raises is the user's to fix, in one line
        raise ModelSpecError(f"model factory {spec!r} failed: {type(exc).__name__}: {exc}") from exc


def _to_bundle(result: Any, spec: str, kwargs: dict[str, Any]) -> ModelBundle:
    if isinstance(result, ModelBundle):
        return result
    if isinstance(result, nn.Module):
        shape = kwargs.get("input_shape")
        if not isinstance(shape, (list, tuple)) or not all(
            isinstance(d, int) and d > 0 for d in shape
        ):
            raise ModelSpecError(
                f"model factory {spec!r} returned a bare {type(result).__name__}; say the input it "
                "takes with input_shape (without the batch), e.g. "
                f"'{spec.partition('?')[0]}?input_shape=[3,224,224]', or return "
                "(module, example_inputs)"
            )
        result = (result, (torch.randn(1, *shape),))
    info: dict[str, Any] = {}
    if isinstance(result, tuple) and len(result) == 3 and isinstance(result[2], dict):
        result, info = result[:2], result[2]
    if not (isinstance(result, tuple) and len(result) == 2):
        raise ModelSpecError(
            f"model factory {spec!r} returned {type(result).__name__}; return a ModelBundle or "
            "(module, example_inputs)"
        )
    module, examples = result
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    examples = tuple(examples)
    task = info.get("task", kwargs.get("task"))
    num_classes = info.get("num_classes", kwargs.get("num_classes"))
    inferred = task is None
    if inferred:
        task, num_classes = _infer_task(module, examples, num_classes)
    return ModelBundle(
        module=module,
        example_inputs=examples,
        name=str(info.get("name") or spec.rpartition(":")[2]),
        task=task,
        num_classes=num_classes,
        factory=spec,
        width=float(kwargs.get("width", 1.0)),
        task_inferred=inferred,
    )


# The fields of a transformers ModelOutput a model's result is read from, most useful first.
OUTPUT_FIELDS = ("logits", "last_hidden_state", "pooler_output", "prediction_logits")


class OutputField(nn.Module):
    """A model that returns an output object (transformers' ``ModelOutput``), reduced to the one
    tensor field of it that every exporter and compression step can work with."""

    def __init__(self, model: nn.Module, field: str) -> None:
        super().__init__()
        self.model = model
        self.field = field

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.model(*inputs), self.field)


def _output_object_fields(out: Any) -> list[str] | None:
    """The tensor fields of a dict-like output object (a ModelOutput, a dict); None otherwise."""
    if isinstance(out, (torch.Tensor, tuple, list)) or not hasattr(out, "items"):
        return None
    try:
        return [k for k, v in out.items() if isinstance(v, torch.Tensor)]
    except Exception:  # noqa: BLE001 - an object with keys() that is no mapping
        return None


def unwrap_output_object(bundle: ModelBundle, spec: str) -> ModelBundle:
    """A bundle whose model returns a ``ModelOutput`` (or a dict) of tensors, wrapped to return its
    ``logits`` (else ``last_hidden_state``, ...) with a printed note; a ModelSpecError naming the
    fields when none of those is there. Other bundles are returned as they are."""
    try:
        with torch.no_grad():
            out = bundle.module.eval()(*bundle.example_inputs)
    except Exception as exc:
        raise ModelSpecError(
            f"model spec {spec!r}: the model fails on its own example inputs: {exc}"
        ) from exc
    fields = _output_object_fields(out)
    if fields is None:
        return bundle
    name = type(out).__name__
    field = next((f for f in OUTPUT_FIELDS if f in fields), None)
    if field is None:
        raise ModelSpecError(
            f"model spec {spec!r} returns a {name} with fields {', '.join(fields) or 'none'}; "
            "return one tensor (e.g. `return model(x).<field>` in the factory's module)"
        )
    note = (
        f"{spec}: the model returns a {name}; using its .{field} (return a tensor, e.g. "
        f"`model(x).{field}`, to choose another field)"
    )
    logger.warning("%s", note)
    print(note, file=sys.stderr)
    module = OutputField(bundle.module, field).eval()
    if bundle.task_inferred:
        task, num_classes = _infer_task(module, bundle.example_inputs, None)
        return dataclasses.replace(bundle, module=module, task=task, num_classes=num_classes)
    return dataclasses.replace(bundle, module=module)


def _infer_task(
    module: nn.Module, examples: tuple[torch.Tensor, ...], num_classes: int | None
) -> tuple[Task, int | None]:
    """A 2-D output is taken for class scores; say ``task=`` in the factory's info otherwise."""
    try:
        with torch.no_grad():
            out = module.eval()(*examples)
    except Exception as exc:
        raise ModelSpecError(f"the model fails on its own example inputs: {exc}") from exc
    if isinstance(out, torch.Tensor) and out.dim() == 2 and out.shape[1] > 1:
        return "classification", num_classes or int(out.shape[1])
    return "regression", None


def _check_bundle(bundle: ModelBundle, spec: str) -> ModelBundle:
    if not isinstance(bundle.module, nn.Module):
        raise ModelSpecError(f"model spec {spec!r} did not give an nn.Module")
    if not bundle.example_inputs or not all(
        isinstance(t, torch.Tensor) for t in bundle.example_inputs
    ):
        raise ModelSpecError(f"model spec {spec!r} gave no example input tensors")
    if bundle.task not in TASKS:
        raise ModelSpecError(
            f"model spec {spec!r}: task {bundle.task!r} is not one of {', '.join(TASKS)}"
        )
    bundle.module.eval()
    return bundle


__all__ = [
    "MODELS",
    "ModelBundle",
    "OutputField",
    "Task",
    "load_model",
    "resolve_factory",
    "unwrap_output_object",
]
