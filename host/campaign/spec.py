"""What a campaign is: its spec, its id, and the recipes its search space expands into."""

from __future__ import annotations

import datetime as dt
import importlib
import json
import re
import uuid
from collections.abc import Collection
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic import ValidationError as PydanticValidationError

from host.campaign.references import (
    OPERATOR,
    Reach,
    Reference,
    ReferencePolicy,
    classify,
    stored_npz,
)
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
from host.errors import ConfigError, HostError, NotFoundError, UnknownDeviceError
from host.models import check_model_spec, resolve_factory
from host.security import edgetailor_home
from host.select import FIGURES, OBJECTIVES, Constraint, Objective
from shared.topics import check_device_id

if TYPE_CHECKING:
    from host.store import Store


def default_work_root() -> Path:
    """Where campaign work dirs go: ``$EDGETAILOR_HOME/campaigns`` (default ~/.edgetailor)."""

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

# The JSON schema of each field is the check itself (pydantic enforces it), so an API client and
# the OpenAPI document agree with what the service accepts.
DEVICE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
CAMPAIGN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
# A bound of at most 15+15 digits and a two-digit exponent: always a finite float.
_NUMBER = r"[-+]?(?:[0-9]{1,15}(?:\.[0-9]{0,15})?|\.[0-9]{1,15})(?:[eE][-+]?[0-9]{1,2})?"
CONSTRAINT_PATTERN = (
    rf"^ *(?:{'|'.join(sorted(FIGURES, key=len, reverse=True))}) *(?:<=|>=|==|<|>) *{_NUMBER} *$"
)
# The same with an optional ``@DEVICE``: the constraint binds that device only (a search's).
DEVICE_CONSTRAINT_PATTERN = (
    CONSTRAINT_PATTERN.removesuffix(" *$") + rf" *(?:@ *{DEVICE_ID_PATTERN[1:-1]})? *$"
)
Task = Literal["classification", "embedding", "regression"]
Format = Literal["tflite", "onnx"]


def _objective(name: str) -> str:
    try:
        return Objective.parse(name).name
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def _constraint_as(text: str, pattern: str, form: str) -> str:
    # The pattern too, so that what the schema says is what is accepted (1e999 parses, to inf).
    try:
        Constraint.parse(text)
        if not re.fullmatch(pattern, text):
            raise ConfigError(
                f"constraint {text!r}: write {form} (a number of at most 15 digits either side "
                "of the point and a 2-digit exponent)"
            )
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


def _constraint(text: str) -> str:
    return _constraint_as(text, CONSTRAINT_PATTERN, "NAME OP NUMBER, e.g. latency_p90_ms<=20")


def _device_constraint(text: str) -> str:
    return _constraint_as(
        text, DEVICE_CONSTRAINT_PATTERN,
        "NAME OP NUMBER[@DEVICE], e.g. latency_p90_ms<=20 or latency_p90_ms<=5@pi-01",
    )  # fmt: skip


def _device_id(text: str) -> str:
    try:
        check_device_id(text)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return text


def no_duplicates(items: tuple[Any, ...]) -> tuple[Any, ...]:
    return tuple(dict.fromkeys(items))


ObjectiveName = Annotated[
    str,
    AfterValidator(_objective),
    WithJsonSchema({"type": "string", "enum": sorted(OBJECTIVES)}),
]
ConstraintText = Annotated[
    str,
    AfterValidator(_constraint),
    WithJsonSchema({"type": "string", "pattern": CONSTRAINT_PATTERN, "maxLength": 128}),
]
DeviceConstraintText = Annotated[
    str,
    Field(max_length=200),
    AfterValidator(_device_constraint),
    WithJsonSchema({"type": "string", "pattern": DEVICE_CONSTRAINT_PATTERN, "maxLength": 200}),
]
DeviceId = Annotated[
    str,
    AfterValidator(_device_id),
    WithJsonSchema({"type": "string", "pattern": DEVICE_ID_PATTERN, "maxLength": 64}),
]
ReferenceText = Annotated[str, Field(min_length=1, max_length=512)]


class SpecError(ConfigError):
    """A spec whose fields do not validate; ``fields`` names each field and why."""

    def __init__(self, message: str, fields: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.fields = fields


def spec_error(exc: PydanticValidationError, what: str = "campaign spec") -> SpecError:
    """A pydantic error as one SpecError that names each field and why."""
    fields = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ())) or "spec"
        fields.append((where, str(err.get("msg", "")).removeprefix("Value error, ")))
    return SpecError(f"{what}: {'; '.join(f'{f}: {m}' for f, m in fields)}", fields)


class CampaignSpec(BaseModel):
    """What to compress, where to measure it, and what counts as good enough.

    The one type of a campaign's spec: the CLI builds it from its options, the API takes it as
    the body of ``POST /api/v1/campaigns`` (its JSON schema is this model's), and the database
    stores it as JSON and reads it back with :meth:`from_stored`. Building one checks its shape
    (types, ranges, constraint syntax, objective, device ids); :meth:`check` checks what it
    names (builtins, files, modules, search space, metric, devices) before any work.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: ReferenceText = Field(
        examples=["builtin:digits_cnn"],
        description="builtin:NAME[?key=value...] or pkg.mod:factory (the CLI also takes "
        "path/file.py:factory)",
    )
    data: ReferenceText = Field(
        examples=["builtin:digits"],
        description="builtin:digits, artifact:SHA256 (an uploaded .npz) or pkg.mod:factory (the "
        "CLI also takes a .npz file or an image folder)",
    )
    space: ReferenceText = Field(
        "default",
        description="a registered search space (`edgetailor compress --list`) or pkg.mod:SPACE "
        "(the CLI also takes a JSON file)",
    )
    devices: tuple[DeviceId, ...] = Field(
        ("all",), min_length=1, max_length=256,
        description='device ids, or ["all"]: every device online when the campaign starts',
    )  # fmt: skip
    constraints: tuple[ConstraintText, ...] = Field(
        (), max_length=32, examples=[["accuracy_drop<=0.02"]],
        description="FIGURE OP NUMBER, e.g. latency_p90_ms<=20 or accuracy_drop<=0.02",
    )  # fmt: skip
    objective: ObjectiveName = Field("max_metric", description="which feasible candidate wins")
    formats: Annotated[tuple[Format, ...], AfterValidator(no_duplicates)] = Field(
        ("tflite",), min_length=1, max_length=2
    )
    pretrain_epochs: int = Field(
        0,
        ge=0,
        le=1000,
        description="train the model on the data first (zoo models start untrained)",
    )
    weights: str | None = Field(
        None, max_length=512, description="state_dict file of the model (CLI only)"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    runs: int = Field(50, ge=1, le=100_000, description="timed runs per benchmark")
    min_s: float = Field(1.0, ge=0, le=3600, description="at least this many seconds of timed runs")
    warmup_s: float = Field(0.5, ge=0, le=600)
    threads: Annotated[
        tuple[Annotated[int, Field(ge=1, le=256)], ...], AfterValidator(no_duplicates)
    ] = Field(
        (), max_length=16,
        description="thread counts to sweep: each (candidate, threads) is measured and selected as "
        "a variant of its own; empty: the agent's default",
    )  # fmt: skip
    eval_samples: int | None = Field(
        1000, ge=1, le=1_000_000, description="the test split, at most this many (null: all of it)"
    )
    job_timeout_s: float = Field(
        300.0, gt=0, le=86_400, description="seconds one benchmark may take"
    )
    retries: int = Field(1, ge=0, le=100, description="extra attempts of a failed job")
    offline_deadline_s: float = Field(
        120.0, gt=0, le=7 * 86_400, description="seconds to wait for an offline device"
    )
    screen_margin: float = Field(
        0.02, ge=0, le=1, description="host-metric margin that counts as dominated"
    )
    task: Task | None = Field(
        None, description="null: the model factory's task, else a guess the campaign states"
    )
    metric: ReferenceText | None = Field(
        None,
        description="a user metric pkg.mod:fn (the CLI also takes file.py:fn), scored on the host",
    )
    strict: bool = Field(False, description="point comparisons instead of 95% intervals")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except PydanticValidationError as exc:
            raise spec_error(exc) from None

    @property
    def all_devices(self) -> bool:
        return self.devices == ("all",)

    def to_dict(self) -> dict[str, Any]:
        """The JSON the database stores."""
        return self.model_dump(mode="json")

    @classmethod
    def from_stored(cls, data: dict[str, Any]) -> CampaignSpec:
        """A spec stored by this or an earlier version (``threads: null`` or a number,
        ``eval_limit``), read as what it means."""
        values = dict(data)
        if "eval_limit" in values:  # specs stored before eval_samples: their cap, or none
            values.setdefault("eval_samples", values.pop("eval_limit"))
        if "threads" in values:
            values["threads"] = parse_threads(values["threads"])
        try:
            return cls.model_validate(values)
        except PydanticValidationError as exc:
            raise spec_error(exc, "stored campaign spec") from None

    from_dict = from_stored

    def same_as(self, stored: dict[str, Any]) -> bool:
        """Whether a spec stored by this or an earlier version asks for the same campaign."""
        try:
            return CampaignSpec.from_stored(stored) == self
        except ConfigError:
            return False

    # -- what the spec names -------------------------------------------------------------------
    def references(self) -> list[Reference]:
        """Every model, data, space, metric and weights reference, classified."""
        refs = [classify("model", self.model), classify("data", self.data),
                classify("space", self.space)]  # fmt: skip
        if self.metric is not None:
            refs.append(classify("metric", self.metric))
        if self.weights is not None:
            refs.append(classify("weights", self.weights))
        return refs

    def check(
        self,
        policy: ReferencePolicy = OPERATOR,
        *,
        store: Store | None = None,
        known_devices: Collection[str] | None = None,
    ) -> list[Recipe]:
        """Everything the spec names, checked before any model or data loads; the recipes its
        search space expands into.

        Refuses (NotAllowedError) what ``policy`` does not let its caller name; raises
        NotFoundError for an unknown builtin, search space, artifact or device (``known_devices``:
        the devices this host has seen; None skips that check), ConfigError for the rest. Module
        code named by the spec is imported (not run) to find its factories.
        """
        refs = self.references()
        check_references(refs, policy, store, what="a campaign")
        recipes = resolve_space(self.space, policy)
        if known_devices is not None and not self.all_devices:
            check_known_devices(self.devices, known_devices)
        return recipes


def check_references(
    refs: list[Reference], policy: ReferencePolicy, store: Store | None, *, what: str
) -> None:
    """Each model, data, metric and weights reference: allowed to the caller (NotAllowedError),
    found (NotFoundError: an unknown builtin or artifact), readable (ConfigError); checked before
    any model or data loads. Module code is imported (not run) to find its factories."""
    for ref in refs:
        policy.check(ref)
    for ref in refs:
        if ref.field == "model":
            if ref.reach is Reach.ARTIFACT:
                raise ConfigError(
                    f"{what}'s model is PyTorch code: builtin:NAME or pkg.mod:factory, not an "
                    "uploaded artifact"
                )
            check_model_spec(ref.text)
        elif ref.field == "data":
            _check_data(ref, store)
        elif ref.field == "metric":
            from host.metrics import load_metric

            load_metric(ref.text)
        elif ref.field == "weights" and not Path(ref.text).is_file():
            raise ConfigError(f"--weights {ref.text}: no such file")


def check_known_devices(devices: Collection[str], known_devices: Collection[str]) -> None:
    """UnknownDeviceError (a NotFoundError) naming the devices this host has never seen."""
    unknown = [d for d in dict.fromkeys(devices) if d not in known_devices]
    if unknown:
        known = ", ".join(sorted(known_devices)[:20]) or "none yet"
        raise UnknownDeviceError(
            f"device(s) {', '.join(unknown)} never seen by this host (known: {known}); "
            "start their agents first, or leave them out"
        )


def _check_data(ref: Reference, store: Store | None) -> None:
    if ref.reach is Reach.BUILTIN:
        if ref.text != "builtin:digits":  # host.data's only builtin
            raise NotFoundError(
                f"unknown builtin data set {ref.text[:80]!r}; known: builtin:digits"
            )
    elif ref.reach is Reach.ARTIFACT:
        if store is None:
            raise ConfigError(f"data {ref.text[:80]!r} names an uploaded artifact: give --db")
        stored_npz(store, ref.text)
    elif ref.reach is Reach.MODULE:
        resolve_factory(ref.text, what="data")
    elif not Path(ref.text).exists():
        raise ConfigError(
            f"data {ref.text!r} is neither builtin:digits, an existing .npz file, an image "
            "folder nor module:factory"
        )


class CampaignRequest(CampaignSpec):
    """``POST /api/v1/campaigns``: the spec, and the id to give the campaign."""

    campaign_id: str | None = Field(
        None, pattern=CAMPAIGN_ID_PATTERN,
        description="name it; the same id with the same spec resumes a stored campaign",
    )  # fmt: skip

    def spec(self) -> CampaignSpec:
        return CampaignSpec.model_validate(self.model_dump(exclude={"campaign_id"}))


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


def resolve_space(space: str, policy: ReferencePolicy = OPERATOR) -> list[Recipe]:
    """Recipes of a registered search space, of a ``pkg.mod:SPACE`` name, or of a JSON file.

    ``pkg.mod:SPACE`` is a :class:`SearchSpace`, a list of recipes, or a callable returning one.
    The file holds a list of recipes, ``{"recipes": [...]}``, or ``{"stages": [[{"label": ...,
    "steps": [...]}, ...], ...]}`` (one alternative per stage, every combination). ``policy``
    says which of these its caller may name.
    """
    ref = classify("space", space)
    policy.check(ref)
    if ref.reach is Reach.BUILTIN:
        if space not in SEARCH_SPACES:
            raise NotFoundError(
                f"unknown search space {space[:80]!r}; known: {', '.join(SEARCH_SPACES)} (see "
                "`edgetailor compress --list`)"
            )
        return SEARCH_SPACES.get(space).expand()
    if ref.reach is Reach.MODULE:
        return _module_space(space)
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


def _module_space(space: str) -> list[Recipe]:
    target, _, attr = space.rpartition(":")
    try:
        found = getattr(importlib.import_module(target), attr)
    except ImportError as exc:
        raise ConfigError(f"search space {space!r}: cannot import {target!r} ({exc})") from exc
    except AttributeError:
        raise NotFoundError(f"search space {space!r}: {target} has no {attr!r}") from None
    if callable(found) and not isinstance(found, SearchSpace):
        found = found()
    if isinstance(found, SearchSpace):
        return found.expand()
    if isinstance(found, (list, tuple)) and found:
        recipes = []
        for index, item in enumerate(found):
            recipe = item if isinstance(item, Recipe) else Recipe.from_obj(item)
            recipes.append(recipe if recipe.name else replace(recipe, name=f"r{index + 1}"))
        names = [r.name for r in recipes]
        if len(set(names)) != len(names):
            raise ConfigError(f"search space {space!r}: recipe names must be unique, got {names}")
        return recipes
    raise ConfigError(
        f"search space {space!r} is a {type(found).__name__}; give a SearchSpace or a list of "
        "recipes"
    )
