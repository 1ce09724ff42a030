"""What a search is: the model, the devices, their constraints, the budget of board measurements."""

from __future__ import annotations

import datetime as dt
import re
import uuid
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal

from host.errors import ConfigError, HostError
from shared.topics import check_device_id

SAMPLERS = ("tpe", "nsga2")
RUNTIMES = ("tflite", "onnx")


class SearchError(HostError):
    """A search cannot start or continue."""


@dataclass(frozen=True)
class SearchSpec:
    """A per-device search (see host.search).

    ``budget`` is the number of board measurements per device, the final checks included;
    ``trials`` the number of candidates the search builds and judges on the host per device.
    ``constraints`` use host.select's grammar, with an optional ``@device`` suffix for one device.
    """

    model: str
    data: str
    devices: tuple[str, ...]
    constraints: tuple[str, ...] = ()
    objective: str = "min_latency"
    budget: int = 8
    trials: int = 24
    sampler: Literal["tpe", "nsga2"] = "tpe"
    runtimes: tuple[str, ...] = ("tflite",)
    threads: tuple[int, ...] = ()  # thread counts to search; empty: 1 to the board's cores
    precisions: tuple[str, ...] = ("fp32", "fp16", "int8_dynamic", "int8", "int8_mixed")
    max_prune: float = 0.7
    lowrank: bool = True
    students: tuple[float, ...] = ()  # distilled student widths to try, e.g. (0.5,)
    recovery_epochs: int = 2  # the short recovery each trial gets on the host
    distill_epochs: int = 6
    pretrain_epochs: int = 0
    weights: str | None = None
    seed: int = 0
    eval_samples: int | None = 1000
    task: str | None = None
    runs: int = 30
    min_s: float = 0.5
    job_timeout_s: float = 300.0
    lease_s: float = 60.0
    strict: bool = False
    # Skip a trial whose host metric already breaks a quality constraint by more than this.
    host_margin: float = 0.0

    def __post_init__(self) -> None:
        from host.campaign.spec import parse_threads
        from host.select import Constraint, Objective

        object.__setattr__(self, "threads", parse_threads(self.threads))
        object.__setattr__(self, "devices", tuple(self.devices))
        object.__setattr__(self, "constraints", tuple(self.constraints))
        object.__setattr__(self, "runtimes", tuple(self.runtimes))
        object.__setattr__(self, "precisions", tuple(self.precisions))
        object.__setattr__(self, "students", tuple(float(s) for s in self.students))
        if not self.devices:
            raise ConfigError("a search needs target devices: --devices ID,ID")
        for device in self.devices:
            check_device_id(device)
        for text in self.constraints:
            constraint = Constraint.parse(text)
            if constraint.device is not None and constraint.device not in self.devices:
                raise ConfigError(
                    f"constraint {text!r} names device {constraint.device!r}, which is not one "
                    f"of the search's devices ({', '.join(self.devices)})"
                )
        Objective.parse(self.objective)
        if self.budget < 1:
            raise ConfigError(f"--budget must be at least 1 board measurement, got {self.budget}")
        if self.trials < 1:
            raise ConfigError(f"--trials must be at least 1, got {self.trials}")
        if self.sampler not in SAMPLERS:
            raise ConfigError(f"--sampler must be one of {', '.join(SAMPLERS)}")
        unknown = sorted(set(self.runtimes) - set(RUNTIMES))
        if unknown or not self.runtimes:
            raise ConfigError(f"--runtimes takes {', '.join(RUNTIMES)}; got {list(self.runtimes)}")
        from host.search.space import PRECISION_CHOICES

        bad = sorted(set(self.precisions) - set(PRECISION_CHOICES))
        if bad or not self.precisions:
            raise ConfigError(
                f"--precisions takes {', '.join(PRECISION_CHOICES)}; got {list(self.precisions)}"
            )
        if not 0 <= self.max_prune < 1:
            raise ConfigError(f"max_prune={self.max_prune} must lie in [0, 1)")
        if any(not 0 < s < 1 for s in self.students):
            raise ConfigError(f"student widths must lie in (0, 1), got {list(self.students)}")
        for name in ("recovery_epochs", "distill_epochs", "pretrain_epochs"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0")
        if self.runs < 1 or self.job_timeout_s <= 0 or self.lease_s <= 0:
            raise ConfigError("runs, job_timeout_s and lease_s must be positive")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key, value in data.items():
            if isinstance(value, tuple):
                data[key] = list(value)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SearchSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"search spec has unknown field(s) {', '.join(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)

    def constraints_for(self, device: str) -> list[str]:
        """The constraints that apply on ``device``: the general ones and its own."""
        from host.select import Constraint

        return [c for c in self.constraints if Constraint.parse(c).device in (None, device)]


def default_work_root() -> Path:
    """Where search work dirs go: ``$EDGETAILOR_HOME/searches`` (default ~/.edgetailor)."""
    from host.security import edgetailor_home

    return edgetailor_home() / "searches"


_SEARCH_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}\Z")


def check_search_id(search_id: str) -> str:
    if not _SEARCH_ID.match(search_id):
        raise ConfigError(
            f"invalid search id {search_id!r}: use 1-48 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return search_id


def new_search_id() -> str:
    return f"s-{dt.datetime.now().strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


__all__ = ["SearchError", "SearchSpec", "check_search_id", "new_search_id"]
