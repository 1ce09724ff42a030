"""What a campaign is: its spec, its id, and the recipes its search space expands into."""

from __future__ import annotations

import datetime as dt
import json
import re
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from host.compress import (
    SEARCH_SPACES,
    ChannelPrune,
    Choice,
    Distill,
    FineTune,
    Int8Full,
    LowRank,
    Recipe,
    SearchSpace,
)
from host.errors import ConfigError, HostError
from shared.topics import check_device_id


def default_work_root() -> Path:
    """Where campaign work dirs go: ``$EDGETAILOR_HOME/campaigns`` (default ~/.edgetailor)."""
    from host.security import edgetailor_home

    return edgetailor_home() / "campaigns"


# On top of the benchmark's own timeout: the transfer, the worker start, the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
POLL_S = 0.5

# Small enough for a laptop (or the 2-core demo machine) in a few minutes, and still one of each
# technique family, alone and combined with full int8.
SEARCH_SPACES.add(
    "demo",
    SearchSpace(
        "demo",
        "none / prune / distill / low-rank, each at fp32 and full int8 (short fine-tunes)",
        (
            (
                Choice("orig"),
                Choice("prune50", (ChannelPrune(ratio=0.5), FineTune(epochs=3))),
                Choice("distill50", (Distill(student=0.5, epochs=8),)),
                Choice("lowrank50", (LowRank(ratio=0.5), FineTune(epochs=2))),
            ),
            (Choice("fp32"), Choice("int8", (Int8Full(),))),
        ),
    ),
)


class CampaignError(HostError):
    """A campaign cannot start or continue (unknown id, spec mismatch, no devices, ...)."""


class CampaignCancelled(HostError):
    """The campaign was cancelled (through the service's API) while it ran."""


# --------------------------------------------------------------------------------------------------
# The spec.


@dataclass(frozen=True)
class CampaignSpec:
    """What to compress, where to measure it, and what counts as good enough."""

    model: str
    data: str
    space: str = "default"
    devices: tuple[str, ...] = ("all",)
    constraints: tuple[str, ...] = ()
    objective: str = "max_metric"
    formats: tuple[str, ...] = ("tflite",)
    pretrain_epochs: int = 0  # zoo models start untrained: campaigns on them pass e.g. 15
    weights: str | None = None
    seed: int = 0
    runs: int = 50
    min_s: float = 1.0
    warmup_s: float = 0.5
    # Thread counts to measure every candidate with: each (candidate, threads) is a variant that
    # selection weighs on its own. Empty: the agent's default, one variant per candidate.
    threads: tuple[int, ...] = ()
    eval_samples: int | None = 1000  # the test split, at most this many (None: all of it)
    job_timeout_s: float = 300.0
    retries: int = 1
    offline_deadline_s: float = 120.0
    screen_margin: float = 0.02
    task: str | None = None  # None: the model factory's task, else a guess the campaign states
    metric: str | None = None  # a user metric pkg.mod:fn / file.py:fn, scored on the host
    strict: bool = False  # point comparisons instead of the 95% intervals in selection

    def __post_init__(self) -> None:
        object.__setattr__(self, "threads", parse_threads(self.threads))
        if not self.devices:
            raise ConfigError("a campaign needs target devices: --devices all or --devices ID,ID")
        if "all" not in self.devices:
            for device in self.devices:
                check_device_id(device)
        for name, value in (("runs", self.runs), ("retries", self.retries + 1)):
            if value < 1:
                raise ConfigError(f"campaign {name}={value} is invalid: it must be positive")
        for name, value in (
            ("job_timeout_s", self.job_timeout_s),
            ("offline_deadline_s", self.offline_deadline_s),
        ):
            if not value > 0:
                raise ConfigError(f"campaign {name}={value} is invalid: it must be > 0 seconds")
        if self.screen_margin < 0:
            raise ConfigError(f"screen_margin={self.screen_margin} must be >= 0")
        if self.eval_samples is not None and self.eval_samples < 1:
            raise ConfigError(f"eval_samples={self.eval_samples} must be at least 1")
        if self.task is not None:
            from shared.scoring import TASKS

            if self.task not in TASKS:
                raise ConfigError(f"task {self.task!r} is not one of {', '.join(TASKS)}")
        from host.select import Constraint, Objective

        for text in self.constraints:
            Constraint.parse(text)
        Objective.parse(self.objective)

    @property
    def all_devices(self) -> bool:
        return "all" in self.devices

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("devices", "constraints", "formats", "threads"):
            data[key] = list(data[key])
        return data

    def same_as(self, stored: dict[str, Any]) -> bool:
        """Whether a spec stored by this or an earlier version asks for the same campaign.

        The stored one is read as :meth:`from_dict` reads it, so fields that an earlier version
        wrote differently (``threads: null``, ``eval_limit``) compare by what they mean.
        """
        try:
            return CampaignSpec.from_dict(stored).to_dict() == self.to_dict()
        except (ConfigError, TypeError):
            return False

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CampaignSpec:
        known = set(cls.__dataclass_fields__) | {"eval_limit"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"campaign spec has unknown field(s) {', '.join(unknown)}")
        values = dict(data)
        if "eval_limit" in values:  # specs stored before eval_samples: their cap, or none
            values.setdefault("eval_samples", values.pop("eval_limit"))
        for key in ("devices", "constraints", "formats"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def parse_threads(value: Any) -> tuple[int, ...]:
    """Thread counts from ``1,2``, an int, a list, or None (specs stored before the sweep)."""
    if value is None or value == "":
        return ()
    if isinstance(value, str):
        items: list[Any] = [part.strip() for part in value.split(",") if part.strip()]
    elif isinstance(value, int):
        items = [value]
    else:
        items = list(value)
    counts = []
    for item in items:
        try:
            count = int(item)
        except (TypeError, ValueError):
            raise ConfigError(f"thread count {item!r} is not an integer; use e.g. --threads 1,2")
        if isinstance(item, bool) or not 1 <= count <= 256 or str(item).strip() != str(count):
            raise ConfigError(f"thread count {item!r} must be an integer from 1 to 256")
        if count not in counts:
            counts.append(count)
    return tuple(counts)


def variant_id(candidate_id: str, threads: int | None, sweep: tuple[int, ...]) -> str:
    """The id of one (candidate, threads) variant: the candidate's own id unless threads are swept."""
    return candidate_id if len(sweep) <= 1 or threads is None else f"{candidate_id}@t{threads}"


def parse_devices(text: str) -> tuple[str, ...]:
    """``all`` or ``ID,ID,...`` from the command line."""
    items = tuple(part.strip() for part in text.split(",") if part.strip())
    if not items:
        raise ConfigError("--devices needs `all` or a comma-separated list of device ids")
    if "all" in items and len(items) > 1:
        raise ConfigError("--devices is either `all` or a list of device ids, not both")
    return items


_CAMPAIGN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}\Z")


def check_campaign_id(campaign_id: str) -> str:
    # It names a directory and database keys.
    if not _CAMPAIGN_ID.match(campaign_id):
        raise ConfigError(
            f"invalid campaign id {campaign_id!r}: use 1-64 letters, digits, '_', '.', '-', "
            "starting with a letter or digit"
        )
    return campaign_id


def new_campaign_id() -> str:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return f"c-{stamp}-{uuid.uuid4().hex[:4]}"


def resolve_space(space: str) -> list[Recipe]:
    """Recipes of a registered search space, or of a JSON file.

    The file holds a list of recipes, ``{"recipes": [...]}``, or ``{"stages": [[{"label": ...,
    "steps": [...]}, ...], ...]}`` (one alternative per stage, every combination).
    """
    if space in SEARCH_SPACES:
        return SEARCH_SPACES.get(space).expand()
    path = Path(space)
    if not path.is_file():
        raise ConfigError(
            f"search space {space!r} is neither a known name ({', '.join(SEARCH_SPACES)}) nor a "
            "JSON file; see `edgetailor compress --list`"
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"cannot read search space {path}: {exc}") from exc
    if isinstance(data, dict) and "stages" in data:
        stages = []
        for s_index, stage in enumerate(data["stages"]):
            if not isinstance(stage, list) or not stage:
                raise ConfigError(
                    f"{path}: stage {s_index + 1} must be a non-empty list of choices"
                )
            choices = []
            for choice in stage:
                if not isinstance(choice, dict) or "label" not in choice:
                    raise ConfigError(f"{path}: a choice is {{'label': ..., 'steps': [...]}}")
                recipe = Recipe.from_obj(choice.get("steps", []))
                choices.append(Choice(str(choice["label"]), recipe.steps))
            stages.append(tuple(choices))
        recipes = SearchSpace(str(data.get("name", path.stem)), "", tuple(stages)).expand()
    else:
        items = data.get("recipes") if isinstance(data, dict) else data
        if not isinstance(items, list) or not items:
            raise ConfigError(
                f"{path}: a search space file is a list of recipes, {{'recipes': [...]}} or "
                "{'stages': [...]}"
            )
        recipes = []
        for index, item in enumerate(items):
            try:
                recipe = Recipe.from_obj(item)
            except ConfigError as exc:
                raise ConfigError(f"{path}: recipe {index + 1}: {exc}") from exc
            recipes.append(recipe if recipe.name else replace(recipe, name=f"r{index + 1}"))
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ConfigError(f"{path}: recipe names must be unique, got {names}")
    return recipes
