"""The registry of command kinds: the extension point for any later command.

A :class:`CommandKind` says, for one ``cmd.<name>`` body, what the pipeline needs to know without
looking at the body itself: the job id it names (cancel works by it), the artifacts it names (the
device may fetch those while the command is open), whether an answer comes back, and the type of
that answer's result, as which it is stored and read back. Adding a command is adding its body to
shared.messages.SCHEMAS and one :data:`KINDS` entry here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from host.commands.models import ANSWERED, CANCELLED, FAILED
from shared.errors import ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import (
    AckCmd,
    BenchmarkCmd,
    Body,
    CancelCmd,
    DeployCmd,
    PingCmd,
    Response,
    RollbackCmd,
    RotateKeyCmd,
    schema_of,
)
from shared.registry import Registry
from shared.results import BenchmarkResult, CancelResult, DeployResult, PingResult, RotateKeyResult

# A device refuses a command it cannot trust with one of these codes (shared.errors); "replayed"
# is left out on purpose: a copy the broker delivered twice is refused while the command runs.
REFUSAL_CODES = frozenset({"unsigned", "bad_signature", "untrusted_key", "expired", "misaddressed"})


@dataclass(frozen=True)
class Outcome:
    """What a final response means for its command: the state, the typed result, the error."""

    state: str
    result: msgspec.Struct | None
    error_code: str | None
    error_message: str | None


@dataclass(frozen=True)
class CommandKind:
    name: str  # the topic name, cmd/<name>; the schema is cmd.<name>
    body: type[Body]
    result: type[msgspec.Struct] | None = None  # what Response.data holds, stored as this
    answered: bool = True  # False: fire and forget (acks), final once published
    # The body fields that hold artifact manifests (the device fetches them; the host signs them).
    manifests: tuple[str, ...] = ()
    job_field: str | None = None  # the body field naming its job (cancel names the job by it)
    # Whether an error response's data may still hold a result (a deploy's DeployResult does).
    result_on_error: bool = False

    def job_id(self, body: Body) -> str | None:
        return getattr(body, self.job_field) if self.job_field else None

    def artifacts(self, body: Body) -> list[ArtifactManifest]:
        found = [getattr(body, field) for field in self.manifests]
        return [m for m in found if isinstance(m, ArtifactManifest)]

    def with_manifests(
        self, body: Body, sign: Callable[[ArtifactManifest], ArtifactManifest]
    ) -> Body:
        """The body with every manifest it names passed through ``sign`` (the key the device
        pins is chosen when the command is published)."""
        changes = {
            field: sign(value)
            for field in self.manifests
            if isinstance(value := getattr(body, field), ArtifactManifest)
        }
        return msgspec.structs.replace(body, **changes) if changes else body

    def decode_body(self, data: str | bytes) -> Body:
        try:
            return msgspec.json.decode(data, type=self.body)
        except msgspec.DecodeError as exc:
            raise ValidationError(f"stored {self.name} command is unreadable: {exc}") from exc

    def decode_result(self, data: str | bytes) -> msgspec.Struct:
        if self.result is None:
            raise ValidationError(f"{self.name} commands have no result")
        try:
            return msgspec.json.decode(data, type=self.result)
        except msgspec.DecodeError as exc:
            raise ValidationError(f"stored {self.name} result is unreadable: {exc}") from exc

    def judge(self, response: Response) -> Outcome:
        """The outcome of a final response; a result that breaks the contract fails the command."""
        error = response.error
        result = None
        wanted = response.status == "ok" or self.result_on_error
        if self.result is not None and response.data is not None and wanted:
            try:
                result = msgspec.convert(response.data, self.result)
            except msgspec.ValidationError as exc:
                if response.status == "ok":
                    return Outcome(
                        FAILED,
                        None,
                        "bad_result",
                        f"the device sent a {self.name} result that does not follow the "
                        f"contract: {exc}",
                    )
        if response.status == "ok":
            return Outcome(ANSWERED, result, None, None)
        code = error.code if error is not None else "failed"
        message = error.message if error is not None else "no error details"
        return Outcome(CANCELLED if code == "cancelled" else FAILED, result, code, message)


KINDS: Registry[str, CommandKind] = Registry("command kind")
KINDS.add(
    "benchmark",
    CommandKind(
        "benchmark", BenchmarkCmd, BenchmarkResult, manifests=("model", "eval_data"),
        job_field="job_id",
    ),
)  # fmt: skip
KINDS.add(
    "deploy",
    CommandKind(
        "deploy", DeployCmd, DeployResult, manifests=("model", "eval_data"),
        job_field="deploy_id", result_on_error=True,
    ),
)  # fmt: skip
KINDS.add("rollback", CommandKind("rollback", RollbackCmd, DeployResult, result_on_error=True))
KINDS.add("cancel", CommandKind("cancel", CancelCmd, CancelResult))
KINDS.add("ping", CommandKind("ping", PingCmd, PingResult))
KINDS.add("rotate_key", CommandKind("rotate_key", RotateKeyCmd, RotateKeyResult))
KINDS.add("ack", CommandKind("ack", AckCmd, answered=False))


def kind_of(body: Body) -> CommandKind:
    """The registered kind of a command body (its schema is ``cmd.<kind>``)."""
    schema = schema_of(body)
    if not schema.startswith("cmd."):
        raise ValidationError(f"{schema} is not a command")
    kind = KINDS.get(schema.removeprefix("cmd."))
    if kind.body is not type(body):
        raise ValidationError(f"{schema} is registered with another body type")
    return kind


__all__ = ["KINDS", "REFUSAL_CODES", "CommandKind", "Outcome", "kind_of"]
