"""Runtime backends, discovered from the modules of this package and registered by artifact format.

Each module defines ``BACKEND``, an object with ``name``, ``formats``, ``probe()`` (the runtime's
RuntimeInfo, or None when it is not installed: found with importlib.util.find_spec and
importlib.metadata, without importing the runtime) and ``load(path, threads)`` (imports the runtime;
called only inside the benchmark worker). A module whose import fails, or whose runtime is not
installed, is skipped and not announced in the birth message.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.messages import RuntimeInfo
from shared.registry import Registry

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name
    scale: float = 0.0  # 0 means not quantized
    zero_point: int = 0


def shaped_for(array: Any, spec: TensorInfo) -> Any:
    """``array`` (holding as many values as ``spec``'s shape) reshaped and cast to the input's
    dtype; float data is quantized with the input's scale and zero point for an integer input."""
    import numpy as np  # only the worker processes feed models: the agent itself stays light

    array = np.asarray(array).reshape(spec.shape)
    target = np.dtype(spec.dtype)
    if np.issubdtype(target, np.integer) and spec.scale and np.issubdtype(array.dtype, np.floating):
        info = np.iinfo(target)
        array = np.clip(np.round(array / spec.scale + spec.zero_point), info.min, info.max)
    return array.astype(target, copy=False)


@dataclass
class LoadedModel:
    """A model ready to run: ``run`` takes and returns arrays in the model's own dtypes."""

    runtime: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    run: Any  # Callable[[list[np.ndarray]], list[np.ndarray]]
    # Callable[[list[np.ndarray]], Callable[[], None]]: sets the inputs once and returns the
    # runtime's bare invoke (outputs not read), for invoke()-only timing; None: not separable.
    prepare: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class Backend(Protocol):
    name: str
    formats: tuple[str, ...]

    def probe(self) -> RuntimeInfo | None: ...

    def import_runtime(self) -> None:
        """Import the runtime's module (timed apart from ``load``)."""
        ...

    def load(self, path: str, threads: int | None) -> LoadedModel: ...


def installed_version(module: str, distributions: tuple[str, ...]) -> str | None:
    """Version of the first installed distribution providing ``module``, without importing it."""
    try:
        if importlib.util.find_spec(module) is None:
            return None
    except (ImportError, ValueError):
        return None
    for dist in distributions:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return "unknown"


def discover() -> Registry[str, Backend]:
    """Backends whose runtime is installed, keyed by the artifact format they run."""
    registry: Registry[str, Backend] = Registry("runtime backend")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
            backend: Backend = module.BACKEND
            runtime = backend.probe()
        except Exception as exc:  # noqa: BLE001 -- a broken plugin must not take the agent down
            logger.warning("backend module %s skipped: %s", info.name, exc)
            continue
        if runtime is None:
            logger.info("backend %s skipped: its runtime is not installed", info.name)
            continue
        for fmt in backend.formats:
            if fmt in registry:
                logger.info(
                    "format %s already served by another backend; %s not used for it",
                    fmt,
                    info.name,
                )
                continue
            registry.add(fmt, backend)
    return registry
