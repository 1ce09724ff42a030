"""What a campaign may name, and who may name it.

A campaign's model, data, search space and metric are *references*: a builtin (``builtin:NAME``, a
registered search space), an artifact uploaded to the service (``artifact:SHA256``, an ``.npz`` as
data), a name in a Python module (``pkg.mod:attr``), or a file or folder on the machine that runs
the campaign. Naming code or a file means running it, with the rights of the process that runs
the campaign; so:

- the operator's own CLI (:data:`OPERATOR`) may name anything, as it always could;
- a caller of the service's API (:meth:`ReferencePolicy.for_api`) may name builtins, uploaded
  artifacts, and names under the module prefixes the operator allowed when starting the service
  (``edgetailor serve --allow-module PKG``, none by default); never a path on the server. Anything
  else is refused with :class:`NotAllowedError` (403), which says how to allow it.

A reference to module code also needs an admin token (host.api.routers.campaigns).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from host.errors import ConfigError, NotAllowedError, NotFoundError

if TYPE_CHECKING:
    from host.store import Store

_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*\Z")
_SHA256 = re.compile(r"^[0-9a-f]{64}\Z")
_SPACE_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}\Z")
ARTIFACT_PREFIX = "artifact:"
BUILTIN_PREFIX = "builtin:"


class Reach(StrEnum):
    BUILTIN = "builtin"  # builtin:NAME, or a registered search space's name
    ARTIFACT = "artifact"  # artifact:SHA256, an .npz uploaded to the service
    MODULE = "module"  # pkg.mod:attr, code importable by the process that runs the campaign
    PATH = "path"  # a file or folder on the machine that runs the campaign


@dataclass(frozen=True)
class Reference:
    """One thing a spec names: which field, the text, and how far it reaches."""

    field: str  # model | data | space | metric | weights
    text: str
    reach: Reach
    module: str | None = None  # the module a MODULE reference imports

    @property
    def base(self) -> str:
        """The text without a model's ``?key=value`` parameters."""
        return self.text.partition("?")[0] if self.field == "model" else self.text


def classify(field: str, text: str) -> Reference:
    """How far ``text`` reaches, read as the loaders read it (host.models, host.data, ...)."""
    text = text.strip()
    base = text.partition("?")[0] if field == "model" else text
    if base.startswith(BUILTIN_PREFIX):
        return Reference(field, text, Reach.BUILTIN)
    if base.startswith(ARTIFACT_PREFIX):
        return Reference(field, text, Reach.ARTIFACT)
    if field == "space" and _SPACE_NAME.match(base) and not base.endswith(".json"):
        return Reference(field, text, Reach.BUILTIN)
    target, sep, attr = base.rpartition(":")
    if sep and _MODULE.match(target) and attr.isidentifier() and not target.endswith(".py"):
        return Reference(field, text, Reach.MODULE, module=target)
    return Reference(field, text, Reach.PATH)


def module_allowed(module: str, prefixes: tuple[str, ...]) -> bool:
    """``pkg.sub`` allows ``pkg.sub`` and ``pkg.sub.x``, not ``pkg`` nor ``pkg.subx``."""
    return any(module == p or module.startswith(f"{p}.") for p in prefixes)


def check_module_prefix(prefix: str) -> str:
    """A ``--allow-module`` value: a dotted module name."""
    prefix = prefix.strip()
    if not _MODULE.match(prefix):
        raise ConfigError(
            f"--allow-module {prefix!r} is not a module name; give a package such as mymodels "
            "or mymodels.vision"
        )
    return prefix


@dataclass(frozen=True)
class ReferencePolicy:
    """Who names the references: the operator (anything) or an API caller (see the module)."""

    operator: bool
    allowed_modules: tuple[str, ...] = ()

    @classmethod
    def for_api(cls, allowed_modules: tuple[str, ...] = ()) -> ReferencePolicy:
        return cls(operator=False, allowed_modules=allowed_modules)

    def check(self, ref: Reference) -> None:
        """Refuse (NotAllowedError) what this caller may not name."""
        if self.operator or ref.reach in (Reach.BUILTIN, Reach.ARTIFACT):
            return
        if ref.reach is Reach.MODULE and ref.module is not None:
            if module_allowed(ref.module, self.allowed_modules):
                return
            top = ref.module.split(".", 1)[0]
            raise NotAllowedError(
                f"{ref.field} {ref.base!r}: module {ref.module!r} is not one the service lets "
                f"campaigns name (allowed: {', '.join(self.allowed_modules) or 'none'}); the "
                f"operator allows it by starting the service with `--allow-module {top}`"
            )
        raise NotAllowedError(
            f"{ref.field} {ref.text[:200]!r} names a file on the service's machine, which API "
            f"callers may not; use {_api_forms(ref.field)}, or run the campaign with the CLI on "
            "that machine (`edgetailor campaign`)"
        )


def _api_forms(field: str) -> str:
    forms = {
        "model": "builtin:NAME or pkg.mod:factory under a module the operator allowed",
        "data": "builtin:digits, artifact:SHA256 (an .npz uploaded with POST "
        "/api/v1/artifacts) or pkg.mod:factory under an allowed module",
        "space": "a registered search space name or pkg.mod:SPACE under an allowed module",
        "metric": "pkg.mod:fn under a module the operator allowed (`serve --allow-module PKG`)",
        "weights": "none (weights come with the model factory, or with pretrain_epochs)",
    }
    return forms.get(field, "a builtin")


OPERATOR = ReferencePolicy(operator=True)


def stored_npz(store: Store, text: str) -> Path:
    """The file of an uploaded ``.npz`` named ``artifact:SHA256``."""
    sha = text.strip().removeprefix(ARTIFACT_PREFIX)
    artifact = store.get_artifact(sha) if _SHA256.match(sha) else None
    if artifact is None:
        raise NotFoundError(
            f"no artifact {sha[:80]!r}: upload the .npz with POST /api/v1/artifacts (or "
            "`edgetailor deploy --server`) and name it artifact:SHA256"
        )
    path = artifact.get("path")
    if (artifact.get("manifest") or {}).get("format") != "npz":
        raise ConfigError(f"artifact {sha} is not an .npz: a campaign's data is an .npz of x, y")
    if not path or not Path(path).is_file():
        raise NotFoundError(f"artifact {sha} is recorded but its file is gone; upload it again")
    return Path(path)


__all__ = [
    "OPERATOR",
    "Reach",
    "Reference",
    "ReferencePolicy",
    "check_module_prefix",
    "classify",
    "module_allowed",
    "stored_npz",
]
