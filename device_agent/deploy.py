"""Deployment on the device: releases, the atomic switch of the active model, health check, rollback.

Layout under the data dir::

    releases/{sha256}/model.{format}   a whole release: the model file and its manifest, fsynced
    releases/{sha256}/manifest.json    before any link points at it
    releases/{sha256}/release.json     optional: how to run it ({"runtime": "tflite", "threads": 2})
    active -> releases/{sha256}        the model applications use: DATA_DIR/active/model.tflite
    previous -> releases/{sha256}      what the last deploy replaced (``rollback`` goes back to it)
    deploy/state.json                  the committed state: active deploy id, highest sequence
    deploy/inflight.json               a switch in progress: what to restore if it never commits

A link is switched by making a fresh symlink under a temporary name and ``os.replace``-ing it over
the old one (rename is atomic), then fsyncing the directory, so a reader or a restarted agent sees
either the old or the new target, never a missing or half-written one. A deploy goes: fetch + verify
-> stage the release -> health check of the staged release in the isolated worker -> write the
in-flight record -> switch (previous := old active, active := new) -> commit (state.json, in-flight
record removed) -> report. A failed health check switches nothing. On start, :meth:`Releases.recover`
finds an in-flight record without a commit and puts both links back where they were.

Test hook: ``EDGETAILOR_AGENT_CRASH_AT=before_switch`` or ``after_switch_before_commit`` makes the
agent ``os._exit(137)`` at that point of an activation, to simulate a SIGKILL there. Tests only.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from device_agent.errors import JobError
from shared.errors import SignatureError, ValidationError
from shared.fsutil import atomic_write, fsync_dir
from shared.hashing import is_sha256_hex, sha256_file
from shared.manifest import ArtifactManifest, decode_manifest, encode_manifest
from shared.messages import DeployCmd, ErrorInfo, Response, RollbackCmd
from shared.results import DeployResult, HealthReport, from_data, to_data

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger(__name__)

CRASH_HOOK_ENV = "EDGETAILOR_AGENT_CRASH_AT"
ACTIVE = "active"
PREVIOUS = "previous"

COMMITTED = "committed"
ROLLED_BACK = "rolled_back"
FAILED = "failed"
RESTORED = "restored"


def _crash_hook(point: str) -> None:
    if os.environ.get(CRASH_HOOK_ENV) == point:
        logger.warning("test hook %s: exiting at %s", CRASH_HOOK_ENV, point)
        os._exit(137)


@dataclass
class DeployState:
    """What the last committed switch left active; persisted in deploy/state.json."""

    active_deploy_id: str | None = None
    sequence: int = 0  # highest manifest sequence ever committed (replay protection)
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class InFlight:
    """A switch that has started and not committed: how to undo it."""

    cmd_id: str
    kind: str  # "deploy" | "rollback"
    deploy_id: str | None
    new_sha256: str
    old_active: str | None
    old_previous: str | None
    sequence: int = 0


@dataclass(frozen=True)
class Recovered:
    """The outcome of a switch a restart interrupted, to report for command ``cmd_id``."""

    cmd_id: str
    kind: str
    response: Response


class Releases:
    """The release directories and the ``active``/``previous`` links of one data dir."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.releases_dir = data_dir / "releases"
        self.state_dir = data_dir / "deploy"
        self.releases_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    # -- reading ---------------------------------------------------------------------------------
    def release_dir(self, sha256: str) -> Path:
        if not is_sha256_hex(sha256):
            raise ValidationError(f"not a sha256 hex digest: {sha256!r}")
        return self.releases_dir / sha256

    def model_path(self, sha256: str) -> Path | None:
        """The model file of a whole release, or None when the release is missing or partial."""
        directory = self.release_dir(sha256)
        if not (directory / "manifest.json").is_file():
            return None
        for candidate in directory.glob("model.*"):
            return candidate
        return None

    def manifest(self, sha256: str) -> ArtifactManifest | None:
        try:
            return decode_manifest((self.release_dir(sha256) / "manifest.json").read_bytes())
        except (OSError, ValidationError):
            return None

    def serving_options(self, sha256: str) -> tuple[str | None, int | None]:
        """The runtime and threads recorded for a release, each None when not recorded."""
        try:
            meta = json.loads((self.release_dir(sha256) / "release.json").read_text("utf-8"))
        except FileNotFoundError:
            return None, None
        except (OSError, ValueError) as exc:
            logger.warning("unreadable release.json of %s: %s", sha256[:12], exc)
            return None, None
        if not isinstance(meta, dict):
            return None, None
        runtime, threads = meta.get("runtime"), meta.get("threads")
        return (
            runtime if isinstance(runtime, str) and runtime else None,
            threads if isinstance(threads, int) and not isinstance(threads, bool) and threads > 0
            else None,
        )  # fmt: skip

    def record_serving_options(self, sha256: str, runtime: str | None, threads: int | None) -> None:
        """Write ``release.json``: the runtime and threads the deploy chose for this release."""
        meta = {"runtime": runtime, "threads": threads}
        atomic_write(self.release_dir(sha256) / "release.json", json.dumps(meta).encode("utf-8"))

    def link_target(self, name: str) -> str | None:
        """The sha256 a link points at, when it points at a whole release."""
        try:
            target = os.readlink(self.data_dir / name)
        except OSError:
            return None
        sha = Path(target).name
        if not is_sha256_hex(sha) or self.model_path(sha) is None:
            return None
        return sha

    def active(self) -> str | None:
        return self.link_target(ACTIVE)

    def previous(self) -> str | None:
        return self.link_target(PREVIOUS)

    def state(self) -> DeployState:
        try:
            return DeployState(**json.loads((self.state_dir / "state.json").read_text("utf-8")))
        except FileNotFoundError:
            return DeployState()
        except (OSError, ValueError, TypeError) as exc:
            logger.error("unreadable deploy state, starting from an empty one: %s", exc)
            return DeployState()

    def inflight(self) -> InFlight | None:
        try:
            return InFlight(**json.loads((self.state_dir / "inflight.json").read_text("utf-8")))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as exc:
            logger.error("unreadable in-flight deploy record: %s", exc)
            return None

    # -- writing ---------------------------------------------------------------------------------
    def stage(self, manifest: ArtifactManifest, artifact: Path) -> Path:
        """Make ``releases/{sha}`` whole (model + manifest, fsynced); returns its model path."""
        sha = manifest.sha256
        existing = self.model_path(sha)
        if existing is not None and sha256_file(existing) == sha:
            return existing
        target = self.release_dir(sha)
        tmp = self.releases_dir / f".{sha}.{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            model = tmp / f"model.{manifest.format}"
            try:
                # Store files are never modified in place, so sharing the inode costs no safety
                # and saves a second copy of the model on a small board's disk.
                os.link(artifact, model)
            except OSError:
                shutil.copyfile(artifact, model)
            with open(model, "rb") as handle:
                os.fsync(handle.fileno())
            if sha256_file(model) != sha:
                raise JobError(
                    "hash_mismatch",
                    f"the stored artifact no longer matches sha256 {sha[:16]}...; it was not "
                    "staged. Deploy it again so it is fetched anew.",
                )
            atomic_write(tmp / "manifest.json", encode_manifest(manifest))
            fsync_dir(tmp)
            if target.exists():
                shutil.rmtree(target)  # a partial release left by a crash: never linked
            os.replace(tmp, target)
            fsync_dir(self.releases_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return target / f"model.{manifest.format}"

    def _set_link(self, name: str, sha256: str | None) -> None:
        link = self.data_dir / name
        if sha256 is None:
            link.unlink(missing_ok=True)
        else:
            tmp = self.data_dir / f".{name}.{uuid.uuid4().hex[:8]}.tmp"
            os.symlink(f"releases/{self.release_dir(sha256).name}", tmp)
            os.replace(tmp, link)
        fsync_dir(self.data_dir)

    def _write_state(self, state: DeployState) -> None:
        state.history = state.history[-20:]
        atomic_write(self.state_dir / "state.json", json.dumps(asdict(state)).encode("utf-8"))

    def _clear_inflight(self) -> None:
        (self.state_dir / "inflight.json").unlink(missing_ok=True)
        fsync_dir(self.state_dir)

    def switch(self, record: InFlight, previous: str | None) -> None:
        """Record, switch both links, commit; ``record.new_sha256`` becomes active."""
        with self._lock:
            atomic_write(self.state_dir / "inflight.json", json.dumps(asdict(record)).encode())
            _crash_hook("before_switch")
            self._set_link(PREVIOUS, previous)
            self._set_link(ACTIVE, record.new_sha256)
            _crash_hook("after_switch_before_commit")
            state = self.state()
            state.active_deploy_id = record.deploy_id
            state.sequence = max(state.sequence, record.sequence)
            state.history.append(
                {"cmd_id": record.cmd_id, "kind": record.kind, "deploy_id": record.deploy_id,
                 "sha256": record.new_sha256}
            )  # fmt: skip
            self._write_state(state)
            self._clear_inflight()
        self.collect_garbage()

    def undo(self, record: InFlight) -> None:
        """Put both links back as ``record`` found them and forget the record."""
        with self._lock:
            self._set_link(ACTIVE, record.old_active)
            self._set_link(PREVIOUS, record.old_previous)
            self._clear_inflight()

    def committed(self, record: InFlight) -> bool:
        history = self.state().history
        return bool(history) and history[-1].get("cmd_id") == record.cmd_id

    def collect_garbage(self, keep: set[str] | None = None) -> None:
        """Remove releases neither link points at (and leftovers of interrupted staging)."""
        wanted = {self.active(), self.previous(), *(keep or set())}
        for entry in self.releases_dir.iterdir():
            if entry.name not in wanted:
                shutil.rmtree(entry, ignore_errors=True)

    def recover(self) -> Recovered | None:
        """After a restart: finish or undo a switch that never committed, and say what happened."""
        record = self.inflight()
        if record is None:
            return None
        if self.committed(record):
            # Killed between writing state.json and removing the record: the switch is done.
            self._clear_inflight()
            outcome, detail = (COMMITTED if record.kind == "deploy" else RESTORED), ""
        else:
            self.undo(record)
            outcome = ROLLED_BACK if record.kind == "deploy" else FAILED
            detail = "the agent restarted during activation; the earlier model was put back"
        logger.warning("recovered interrupted %s %s: %s", record.kind, record.cmd_id, outcome)
        result = DeployResult(
            deploy_id=record.deploy_id,
            outcome=outcome,
            active_sha256=self.active(),
            previous_sha256=self.previous(),
            detail=detail,
        )
        if outcome in (COMMITTED, RESTORED):
            response = Response(status="ok", data=to_data(result))
        else:
            response = _failure(result, "interrupted", detail)
        self.collect_garbage()
        return Recovered(record.cmd_id, record.kind, response)


# Signatures of the agent's machinery that a deploy reuses (fetch, isolated worker, progress).
Obtain = Callable[[ArtifactManifest, int], Path]
RunHealth = Callable[[dict[str, Any], float], dict[str, Any]]
Progress = Callable[[str], None]


class Deployer:
    """Carries out cmd.deploy and cmd.rollback on one device's :class:`Releases`."""

    def __init__(
        self,
        releases: Releases,
        device_id: str,
        trust_key: Callable[[], Ed25519PublicKey | None] | None = None,
        threads: int | None = None,
    ) -> None:
        self.releases = releases
        self.device_id = device_id
        # The pinned host key, read at each deploy: a rotation changes it while the agent runs.
        self._trust_key = trust_key or (lambda: None)
        self.threads = threads

    @property
    def trust_key(self) -> Ed25519PublicKey | None:
        return self._trust_key()

    def deploy(
        self,
        cmd_id: str,
        cmd: DeployCmd,
        *,
        obtain: Obtain,
        run_health: RunHealth,
        progress: Progress,
    ) -> Response:
        releases = self.releases
        old_active, old_previous = releases.active(), releases.previous()
        state = releases.state()

        def result(
            outcome: str, health: HealthReport | None = None, detail: str = ""
        ) -> DeployResult:
            return DeployResult(
                deploy_id=cmd.deploy_id, outcome=outcome, active_sha256=releases.active(),
                previous_sha256=releases.previous(), health=health, detail=detail,
            )  # fmt: skip

        trusted = self.trust_key
        if trusted is not None:
            from shared.signing import verify_manifest

            # A new deploy must be newer than every committed one; an equal sequence is only the
            # same committed deploy run again (journal replay after a crash before its report).
            # Otherwise replaying the last signed deploy would undo a rollback.
            rerun = state.active_deploy_id == cmd.deploy_id and old_active == cmd.model.sha256
            try:
                verify_manifest(
                    cmd.model,
                    trusted,
                    device_id=self.device_id,
                    min_sequence=state.sequence if rerun else state.sequence + 1,
                )
            except SignatureError as exc:
                detail = f"{exc}; refused before download"
                return _failure(result(FAILED, detail=detail), "untrusted_manifest", detail)
        try:
            progress("fetching")
            model_path = obtain(cmd.model, cmd.chunk_size)
            eval_path = obtain(cmd.eval_data, cmd.chunk_size) if cmd.eval_data else None
            progress("staging")
            staged = releases.stage(cmd.model, model_path)
            releases.record_serving_options(
                cmd.model.sha256, cmd.runtime, cmd.threads or self.threads
            )
        except JobError as exc:
            if exc.code == "cancelled":
                raise
            return _failure(result(FAILED, detail=exc.message), exc.code, exc.message)

        progress("health_check")
        health = self._health(cmd, staged, eval_path, run_health)
        if not health.passed:
            releases.collect_garbage()
            detail = f"health check failed: {health.detail}; the active model was not changed"
            logger.warning("deploy %s rolled back: %s", cmd.deploy_id, health.detail)
            return _failure(result(ROLLED_BACK, health, detail), "health_check_failed", detail)

        if old_active == cmd.model.sha256:
            return Response(
                status="ok",
                data=to_data(result(COMMITTED, health, "this model was already active")),
            )
        progress("switching")
        record = InFlight(
            cmd_id=cmd_id, kind="deploy", deploy_id=cmd.deploy_id, new_sha256=cmd.model.sha256,
            old_active=old_active, old_previous=old_previous, sequence=cmd.model.sequence,
        )  # fmt: skip
        try:
            releases.switch(record, previous=old_active)
        except (OSError, ValidationError) as exc:
            logger.exception("switch of deploy %s failed; switching back", cmd.deploy_id)
            detail = f"the switch failed ({exc}); {_switch_back(releases, record)}"
            return _failure(result(ROLLED_BACK, health, detail), "switch_failed", detail)
        logger.info("deploy %s committed: active %s", cmd.deploy_id, cmd.model.sha256[:12])
        return Response(status="ok", data=to_data(result(COMMITTED, health)))

    def _health(
        self, cmd: DeployCmd, staged: Path, eval_path: Path | None, run_health: RunHealth
    ) -> HealthReport:
        job = {
            "mode": "health",
            "job_id": cmd.deploy_id,
            "model_path": str(staged),
            "model_format": cmd.model.format,
            "model_sha256": cmd.model.sha256,
            "eval_path": str(eval_path) if eval_path else None,
            "threads": cmd.threads or self.threads,
            "health_runs": cmd.health_runs,
            "latency_budget_ms": cmd.latency_budget_ms,
            "min_metric": cmd.min_metric,
        }
        try:
            return from_data(run_health(job, cmd.timeout_s), HealthReport)
        except JobError as exc:
            if exc.code == "cancelled":
                raise
            return HealthReport(
                passed=False, checks={"loads": False}, detail=f"[{exc.code}] {exc.message}"
            )

    def rollback(self, cmd_id: str, cmd: RollbackCmd) -> Response:
        releases = self.releases
        old_active, old_previous = releases.active(), releases.previous()
        state = releases.state()

        def result(outcome: str, detail: str = "") -> DeployResult:
            return DeployResult(
                deploy_id=cmd.deploy_id, outcome=outcome, active_sha256=releases.active(),
                previous_sha256=releases.previous(), detail=detail,
            )  # fmt: skip

        if cmd.deploy_id is not None and cmd.deploy_id != state.active_deploy_id:
            detail = (
                f"deploy {cmd.deploy_id} is not the active one (active: "
                f"{state.active_deploy_id or 'none'}); nothing was changed"
            )
            return _failure(result(FAILED, detail), "not_active", detail)
        if old_previous is None:
            detail = "there is no previous model on this device to roll back to"
            return _failure(result(FAILED, detail), "nothing_to_roll_back", detail)
        record = InFlight(
            cmd_id=cmd_id, kind="rollback", deploy_id=None, new_sha256=old_previous,
            old_active=old_active, old_previous=old_previous, sequence=0,
        )  # fmt: skip
        try:
            releases.switch(record, previous=old_active)
        except (OSError, ValidationError) as exc:
            logger.exception("switch of the rollback failed; switching back")
            detail = f"the switch failed ({exc}); {_switch_back(releases, record)}"
            return _failure(result(FAILED, detail), "switch_failed", detail)
        logger.info("rolled back to %s (%s)", old_previous[:12], cmd.reason or "no reason given")
        return Response(status="ok", data=to_data(result(RESTORED, cmd.reason)))

    def failed(self, cmd: DeployCmd | RollbackCmd, code: str, message: str) -> Response:
        """The final answer to a deploy or rollback that stopped on an error; nothing switched."""
        result = DeployResult(
            deploy_id=cmd.deploy_id, outcome=FAILED, active_sha256=self.releases.active(),
            previous_sha256=self.releases.previous(), detail=message,
        )  # fmt: skip
        return _failure(result, code, message)


def _switch_back(releases: Releases, record: InFlight) -> str:
    """Undo a switch that failed half-way; says in words where that left the device."""
    try:
        releases.undo(record)
    except OSError:
        logger.exception("could not switch back after a failed switch")
        # The in-flight record is still on disk: recovery at the next start restores the links.
        return "switching back failed too; the agent restores the earlier model when it restarts"
    return "the earlier model is active again"


def _failure(result: DeployResult, code: str, message: str) -> Response:
    """An error response that still carries the DeployResult: the host learns what is active."""
    return Response(
        status="error", data=to_data(result), error=ErrorInfo(code=code, message=message[:4000])
    )
