"""The command driver: the one place that publishes commands and stores their answers.

Two threads per host process:

- the **publisher** (:meth:`CommandDriver.step`, every ``poll_s`` or when woken) publishes the
  pending commands of online devices, publishes open ones again when their device came back
  online, when this process has not published them yet (a restart, another replica's command),
  or when a published one got no sign of life for ``republish_s``; new commands naming one
  artifact that are recorded in a burst go out together once the burst settles (``SETTLE_S``, at
  most ``MAX_HOLD_S``), so that their devices fetch one stream of it; it expires commands past
  their expiry, sends key rotations and retires previous keys (host.commands.keys);
- the **writer** takes what paho's network thread hands it (progress, final responses, outputs
  parts), gathering what arrives within ``GATHER_S`` of the first, and handles a batch at a time
  in one transaction of bulk statements: stages noted, each final answer stored once (by command,
  by response msg_id), then acknowledged by an ack command per device, itself recorded and signed.
  Progress waits up to ``PROGRESS_HOLD_S`` for a newer report of its command or its answer; only
  the one still standing then has its signature checked (the Fleet defers that check to here) and
  is noted.

Publishing a command: the rows' sequence numbers are reserved and the rows marked published in one
transaction, committed before anything goes out; each command is then signed (shared.signing) at
that moment with the key its device pins, with a fresh expiry (``ttl_s``) and its own sequence
number, the manifests it names signed again with the same key. A command waiting for an offline
board therefore never expires on the wire, and every envelope on the wire is fresh.

A response is matched to its row by corr_id == the command id AND the device it came from == the
command's device; the Fleet has already checked it is signed by that device's pinned key. A
response to a command id of this database that has no row is acknowledged as ``unknown`` (the
agent drops it); one to another database's command is left alone.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import msgspec
from sqlalchemy import select

from host.commands.grants import ChunkGate
from host.commands.keys import HostKeys
from host.commands.kinds import KINDS, REFUSAL_CODES
from host.commands.models import FINAL_STATES, PENDING, PUBLISHED, RUNNING, SENT, CommandRow
from host.commands.repository import CommandInfo, CommandStore, Due, FinalAnswer, NewCommand
from host.errors import JobFailedError, JobTimeoutError
from shared.errors import EdgeTailorError, IntegrityError, ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import (
    DEFAULT_TTL_S,
    AckCmd,
    Body,
    Message,
    OutputsPart,
    Response,
    RotateKeyCmd,
    encode,
)
from shared.signing import Signer, sign_manifest

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from host.fleet.devices import DeviceRegistry
    from host.fleet.outputs import OutputsCollector
    from host.store import Store

logger = logging.getLogger(__name__)

POLL_S = 0.25
REPUBLISH_SCAN_S = 2.0  # how often open commands are looked at for publishing again
# Commands naming one artifact, recorded this close together (a campaign's device threads, say),
# are published together, at most this long after the first: their devices then fetch one stream.
SETTLE_S = 0.2
MAX_HOLD_S = 2.0
REPUBLISH_S = 30.0  # a published command with no sign of life is published again after this
EXPIRE_SCAN_S = 1.0
HOUSEKEEPING_S = 5.0
SENT_RETENTION_S = 3600.0  # acks are kept this long after they went out
BATCH = 1000  # incoming messages handled per transaction at most
# The writer gathers what arrives this long after the first message of a batch (a network loop's
# worth): one transaction, one ack per device and one round of signatures per batch.
GATHER_S = 0.05
# A progress report waits this long for a newer one of its command, or its answer, before it is
# checked and noted (a stage shows up to this late): a board reports accepted, fetching and
# running within a second or two, and each checked signature costs as much as storing the answer.
PROGRESS_HOLD_S = 1.0
ACK_LIMIT = 1024  # msg_ids per ack command (shared.messages.AckCmd)
ENDED_MEMORY = 100_000  # command ids ended by this process that waiters look up in memory
FULL_LOOK_S = 1.0  # waiters read every command they wait for this often (others' answers)


class CommandLink(Protocol):
    """What the driver needs of the MQTT side (host.fleet.Fleet)."""

    registry: DeviceRegistry

    @property
    def connected(self) -> bool: ...

    def publish_command(self, device_id: str, name: str, payload: bytes) -> None: ...

    def expect_artifact(self, sha256: str, device_id: str) -> None: ...


@dataclass(frozen=True)
class _Incoming:
    device_id: str
    message: Message
    # The signature check still to run (None: done). The Fleet defers it for progress, of which
    # only the last per command in a batch is worth checking (module docstring).
    check: Callable[[], bool] | None = None


class CommandDriver:
    """Publishes the commands recorded in ``store`` through ``link`` and stores their answers."""

    def __init__(
        self,
        store: Store,
        link: CommandLink,
        keys: HostKeys,
        *,
        gate: ChunkGate | None = None,
        outputs: OutputsCollector | None = None,
        ttl_s: float = DEFAULT_TTL_S,
        poll_s: float = POLL_S,
        republish_s: float = REPUBLISH_S,
        gather_s: float = GATHER_S,
        progress_hold_s: float = PROGRESS_HOLD_S,
    ) -> None:
        self.commands = CommandStore(store)
        self.link = link
        self.keys = keys
        self.gate = gate
        self.outputs = outputs
        self.ttl_s = ttl_s
        self.poll_s = poll_s
        self.republish_s = republish_s
        self.gather_s = gather_s
        self.progress_hold_s = progress_hold_s
        # (device, command) -> the newest progress not noted yet, and when it is due (the writer's)
        self._held: dict[tuple[str, str], tuple[_Incoming, float]] = {}
        self._hold_until = 0.0  # a burst of new commands is looked at again then
        self._signed_manifests: dict[tuple[bytes, str], ArtifactManifest] = {}
        self.dropped: Counter[str] = Counter()  # responses dropped, by reason
        self.stored: Counter[str] = Counter()  # final answers stored by this process, by command
        self._published: dict[str, float | None] = {}  # command id -> device online_since then
        self._inbox: queue.SimpleQueue[_Incoming | None] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._rescan = threading.Event()
        self._recorded = threading.Event()  # this process recorded commands since the last look
        self._stop = threading.Event()
        self._changed = threading.Condition()
        self._generation = 0  # bumped each time answers were stored or commands ended
        self._ended: dict[str, None] = {}  # commands this process ended (bounded, see _notify)
        self._threads: list[threading.Thread] = []
        self._last = {"rescan": 0.0, "expire": 0.0, "housekeeping": 0.0, "prune": 0.0}
        self._rotations: dict[str, str] = {}  # device -> open rotate command id
        self._logged: set[tuple[str, str]] = set()

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        other = self.commands.note_host_key(self.keys.key_id, self.keys.previous)
        if other is not None:
            logger.error(
                "this host signs with key %s, but another host process on this database signs "
                "with %s: devices pin one key, and refuse commands signed by the other. Give "
                "every host process on one database the same --signing-key (or rotate with "
                "`edgetailor keys rotate` on one of them)",
                self.keys.key_id,
                other,
            )
        for name, target in (("commands", self._run), ("answers", self._write_forever)):
            thread = threading.Thread(target=target, name=f"edgetailor-{name}", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        """Stop both threads; answers already received are stored and acknowledged first."""
        if not self._threads:
            return
        self._stop.set()
        self._wake.set()
        self._inbox.put(None)
        for thread in self._threads:
            thread.join(timeout=15)
        self._threads = []

    # -- recording -------------------------------------------------------------------------------
    def send(
        self,
        device_id: str,
        body: Body,
        *,
        expires_in: float | None = None,
        command_id: str | None = None,
    ) -> CommandInfo:
        """Record a command for ``device_id``; it is published as soon as the device is online.
        ConfigError when the body breaks the wire contract."""
        expires_at = time.time() + expires_in if expires_in is not None else None
        [info] = self.commands.add(
            [NewCommand(device_id, body, expires_at=expires_at, command_id=command_id)]
        )
        self.wake()
        return info

    def cancel(self, command_id: str) -> bool:
        """Cancel an open command (a row state; a signed cancel goes out if it was published)."""
        cancelled = self.commands.request_cancel(command_id)
        if cancelled:
            if self.gate is not None:
                self.gate.revoke([command_id])
            self._notify([command_id])
            self.wake()
        return cancelled

    def wake(self) -> None:
        """Commands were recorded: look at the pending ones now."""
        self._recorded.set()
        self._wake.set()

    def device_online(self, device_id: str) -> None:
        """A device (re)connected: its open commands may need publishing again."""
        self._rescan.set()
        self._wake.set()

    # -- waiting ---------------------------------------------------------------------------------
    def wait(self, command_id: str, timeout: float | None = None) -> CommandInfo:
        """The command once it is final; JobTimeoutError when it is not within ``timeout`` s."""
        return self.wait_all([command_id], timeout)[command_id]

    def wait_all(
        self, command_ids: Sequence[str], timeout: float | None = None
    ) -> dict[str, CommandInfo]:
        """Every one of these commands once all are final (a query for the open ones each time
        answers were stored, by this process or, looked at every second, by another one);
        JobTimeoutError naming the first still open when they are not within ``timeout`` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        waiting = list(dict.fromkeys(command_ids))
        done: dict[str, CommandInfo] = {}
        full_at = float("-inf")
        while True:
            with self._changed:
                generation = self._generation
                ended_here = [c for c in waiting if c in self._ended]
            if time.monotonic() - full_at >= FULL_LOOK_S:
                # Every one: another host process on this database may have ended some.
                full_at = time.monotonic()
                states = self.commands.states(waiting)
                unknown = [c for c in waiting if c not in states]
                if unknown:
                    raise ValidationError(f"no command {unknown[0]} in the database")
                ended = [c for c in waiting if states[c] in FINAL_STATES]
            else:
                ended = ended_here  # this process's answers: looked up when they come
            if ended:
                done.update((c, i) for c, i in self.commands.many(ended).items() if i.final)
                waiting = [c for c in waiting if c not in done]
            if not waiting:
                return {c: done[c] for c in dict.fromkeys(command_ids)}
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                info = self.commands.get(waiting[0])
                if info is None:
                    raise ValidationError(f"no command {waiting[0]} in the database")
                more = f" ({len(waiting) - 1} more still open)" if len(waiting) > 1 else ""
                raise JobTimeoutError(
                    f"{info.kind} {info.job_id} on device {info.device_id} gave no final answer "
                    f"within {timeout:.0f} s (state {info.state}, stage {info.stage or 'none'})"
                    f"{more}; the device may be offline or busy"
                )
            with self._changed:
                if self._generation == generation:  # nothing stored since the query
                    self._changed.wait(FULL_LOOK_S if left is None else min(left, FULL_LOOK_S))

    def _notify(self, ended: Sequence[str] = ()) -> None:
        with self._changed:
            if len(self._ended) + len(ended) > ENDED_MEMORY:
                self._ended.clear()  # waiters then look at the database in full once more
                self._generation += 1
            self._ended.update(dict.fromkeys(ended))
            self._generation += 1
            self._changed.notify_all()

    # -- publishing ------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            held = self._hold_until - time.time()
            self._wake.wait(min(self.poll_s, held) if held > 0 else self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.step()
            except Exception:  # the loop outlives any one bad pass (a database hiccup)
                logger.exception("command driver pass failed")

    def step(self) -> None:
        """One pass: publish what is due, expire, housekeeping."""
        now = time.time()
        if self.link.connected:
            rescan = self._rescan.is_set() or now - self._last["rescan"] >= REPUBLISH_SCAN_S
            if rescan:
                self._rescan.clear()
                self._last["rescan"] = now
            if rescan or (self._recorded.is_set() and now >= self._hold_until):
                # New rows of this process are looked at at once (a burst once it settled);
                # other processes' every scan.
                self._recorded.clear()
                self._publish_due(pending_only=not rescan)
        if now - self._last["expire"] >= EXPIRE_SCAN_S:
            self._last["expire"] = now
            expired = self.commands.expire_due(now)
            if expired:
                logger.info("%d commands expired unanswered", len(expired))
                if self.gate is not None:
                    self.gate.revoke(expired)
                self._notify(expired)
        if now - self._last["housekeeping"] >= HOUSEKEEPING_S:
            self._last["housekeeping"] = now
            self._housekeeping()
        if now - self._last["prune"] >= 60.0:
            self._last["prune"] = now
            self.commands.prune_sent(now - SENT_RETENTION_S)

    def _online_since(self, device_id: str) -> float | None:
        record = self.link.registry.get(device_id)
        if record is None or not record.online or record.birth is None:
            return None
        return record.online_since if record.online_since is not None else 0.0

    def _publish_due(self, *, pending_only: bool, settle: bool = True) -> None:
        now = time.time()
        picked = []
        fresh: dict[str, list[Due]] = {}  # artifact -> new commands naming it
        for due in self.commands.due(pending_only=pending_only):
            since = self._online_since(due.device_id)
            if since is None or (due.expires_at is not None and due.expires_at <= now):
                continue
            if due.state == PENDING and due.model_sha256 is not None and settle:
                fresh.setdefault(due.model_sha256, []).append(due)
            elif due.state == PENDING:
                picked.append(due)
            elif due.command_id not in self._published or self._published[due.command_id] != since:
                picked.append(due)  # not by this process yet, or the device has been away since
            elif (
                due.state == PUBLISHED
                and due.published_at is not None
                and now - due.published_at > self.republish_s
            ):
                picked.append(due)  # no sign of life at all: the first copy may be lost
        hold_until = 0.0
        for rows in fresh.values():
            newest, oldest = max(r.created for r in rows), min(r.created for r in rows)
            if now - newest < SETTLE_S and now - oldest < MAX_HOLD_S:
                # More may follow: the burst is looked at again once it settled, not before
                # (every command recorded meanwhile would have it read again).
                until = min(newest + SETTLE_S, oldest + MAX_HOLD_S)
                hold_until = until if hold_until == 0.0 else min(hold_until, until)
                self._recorded.set()
                continue
            picked += rows
        self._hold_until = hold_until
        if picked:
            self.publish(picked)

    def publish(self, dues: Sequence[Due]) -> None:
        """Reserve sequence numbers and mark the rows (one transaction), then sign and publish."""
        with self.commands.store.transaction() as session:
            seqs = self._reserve(session, dues)
        self._send(dues, seqs)

    def _reserve(self, session: Session, dues: Sequence[Due]) -> list[int]:
        """Each command's sequence number, and the rows marked published, in the caller's
        transaction: nothing goes out before it commits."""
        seqs = self._sequences(session, dues)
        answered = [d.command_id for d in dues if KINDS.get(d.kind).answered]
        unanswered = [d.command_id for d in dues if not KINDS.get(d.kind).answered]
        self.commands.mark_published(session, answered + unanswered, unanswered)
        return seqs

    def _sequences(self, session: Session, dues: Sequence[Due]) -> list[int]:
        """Each command's sequence number, reserved in the caller's transaction."""
        counts: Counter[str] = Counter(due.device_id for due in dues)
        nexts = self.commands.allocate_many(session, dict(counts))
        seqs = [0] * len(dues)
        for index, due in enumerate(dues):
            seqs[index] = nexts[due.device_id]
            nexts[due.device_id] += 1
        return seqs

    def _send(self, dues: Sequence[Due], seqs: Sequence[int]) -> None:
        for due, seq in zip(dues, seqs, strict=True):
            self._sign_and_publish(due, seq)

    def _sign_and_publish(self, due: Due, seq: int) -> None:
        kind = KINDS.get(due.kind)
        record = self.link.registry.get(due.device_id)
        pinned = record.birth.host_key_id if record is not None and record.birth else None
        signer = self.keys.signer_for(pinned)
        try:
            body = kind.decode_body(due.body_json)
            body = kind.with_manifests(body, lambda m: self._signed(m, signer))
            payload = encode(
                body, device_id=due.device_id, msg_id=due.command_id, signer=signer, seq=seq,
                ttl_s=self.ttl_s,
            )  # fmt: skip
        except EdgeTailorError as exc:
            logger.error("command %s cannot be published: %s", due.command_id, exc)
            return
        for sha in (due.model_sha256, due.eval_sha256):
            if sha is not None:
                if self.gate is not None:
                    self.gate.grant(due.device_id, sha, due.command_id, due.expires_at)
                self.link.expect_artifact(sha, due.device_id)
        self.link.publish_command(due.device_id, kind.name, payload)
        self._published[due.command_id] = self._online_since(due.device_id)
        if len(self._published) > 100_000:
            self._published.clear()  # everything open is published once more: harmless
        logger.info(
            "published cmd.%s %s to %s (seq %d, key %s)",
            kind.name, due.command_id, due.device_id, seq, signer.key_id,
        )  # fmt: skip

    def _signed(self, manifest: ArtifactManifest, signer: Signer) -> ArtifactManifest:
        """The manifest signed with ``signer``'s key; a rollout names one manifest in every
        device's command, and its signature does not depend on the device (a manifest addressed
        to one device names it), so it is signed once per key."""
        key = (msgspec.json.encode(manifest), signer.key_id)
        signed = self._signed_manifests.get(key)
        if signed is None:
            signed = sign_manifest(manifest, signer.private_key)
            if len(self._signed_manifests) >= 256:
                self._signed_manifests.clear()
            self._signed_manifests[key] = signed
        return signed

    # -- key rotation ----------------------------------------------------------------------------
    def _housekeeping(self) -> None:
        try:
            self.keys.reload()
        except EdgeTailorError as exc:
            logger.error("cannot reload the host keys: %s", exc)
            return
        if not self.keys.previous:
            return
        pinned_by: dict[str, set[str]] = {}
        for device in self.commands.store.list_devices():
            key_id = (device.birth or {}).get("host_key_id")
            if key_id:
                pinned_by.setdefault(key_id, set()).add(device.device_id)
        for key_id in list(self.keys.previous):
            devices = pinned_by.get(key_id, set())
            if not devices:
                self.keys.retire(key_id)
                continue
            for device_id in devices:
                self._ensure_rotation(device_id)

    def _ensure_rotation(self, device_id: str) -> None:
        """A device still pins a previous key: send it a rotation signed with that key."""
        open_id = self._rotations.get(device_id)
        if open_id is not None:
            info = self.commands.get(open_id)
            if info is not None and not info.final:
                return
        if open_id is None:
            for info in self.commands.list(
                device_id=device_id, kinds=("rotate_key",), states=(PENDING, PUBLISHED, RUNNING)
            ):
                self._rotations[device_id] = info.command_id
                return
        info = self.send(device_id, RotateKeyCmd(key=self.keys.current.key, reason="key rotation"))
        self._rotations[device_id] = info.command_id
        logger.info("device %s pins a previous host key: rotation %s", device_id, info.command_id)

    # -- answers (paho's network thread hands them over) -----------------------------------------
    def on_message(
        self, device_id: str, message: Message, *, check: Callable[[], bool] | None = None
    ) -> None:
        """A response or outputs part from ``device_id``, authenticated by the Fleet, or (a
        progress response) to be authenticated by ``check`` if it is still worth it when its
        batch is written."""
        self._inbox.put(_Incoming(device_id, message, check))

    def _write_forever(self) -> None:
        while True:
            wait = None
            if self._held:
                wait = max(0.0, min(due for _, due in self._held.values()) - time.monotonic())
            try:
                item = self._inbox.get(timeout=wait)
            except queue.Empty:  # held progress is due
                item, stopping = None, False
            else:
                stopping = item is None
            batch = [] if item is None else [item]
            if batch and not stopping and self.gather_s > 0:
                # What arrives meanwhile joins this batch: one wake-up of this thread, not one
                # per message.
                self._stop.wait(self.gather_s)
            while batch and len(batch) < BATCH:
                try:
                    more = self._inbox.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    continue
                batch.append(more)
            try:
                self.handle(batch, flush=stopping)
            except Exception:  # one bad batch must not stop the writer
                logger.exception("could not handle %d device answers", len(batch))
            if stopping:
                return

    def handle(self, batch: Sequence[_Incoming], *, flush: bool = False) -> None:
        """Note progress, store final answers once, acknowledge them (one transaction).
        Progress is held for ``progress_hold_s`` first (``flush``: none is held)."""
        finals: list[_Incoming] = []
        parts: list[_Incoming] = []
        now = time.monotonic()
        for item in batch:
            body = item.message.body
            if isinstance(body, OutputsPart):
                parts.append(item)
            elif isinstance(body, Response) and body.status == "progress":
                command_id = item.message.corr_id
                if command_id is not None and self.commands.is_ours(command_id):
                    key = (item.device_id, command_id)
                    held = self._held.get(key)  # replaced by the newer one, due as it was
                    self._held[key] = (item, held[1] if held else now + self.progress_hold_s)
            elif isinstance(body, Response):
                finals.append(item)
        for item in finals:  # the answer says more than any progress
            self._held.pop((item.device_id, item.message.corr_id or ""), None)
        due = [k for k, (_, at) in self._held.items() if flush or at <= now]
        noted = [
            item for item in (self._held.pop(k)[0] for k in due)
            if item.check is None or item.check()
        ]  # fmt: skip
        if not (finals or parts or noted):
            return
        acks: dict[str, tuple[list[str], list[str]]] = {}
        for item, verdict in self._write_parts(parts):
            ok, unknown = acks.setdefault(item.device_id, ([], []))
            (ok if verdict else unknown).append(item.message.msg_id)
        ended: list[str] = []
        stages: dict[str, str] = {}
        with self.commands.store.transaction() as session:
            wanted = [i.message.corr_id for i in finals if self.commands.is_ours(i.message.corr_id)]
            rows = self._rows(session, wanted + [i.message.corr_id for i in noted])
            for item in noted:
                command_id = item.message.corr_id or ""
                row = rows.get(command_id)
                if row is not None and row[0] == item.device_id:  # its own commands only
                    stage = (item.message.body.data or {}).get("stage", "progress")  # type: ignore[union-attr]
                    stages[command_id] = str(stage)[:32]
            if stages:
                self.commands.note_stages(session, stages)
            stored_ids = self.commands.stored_responses(session, [i.message.msg_id for i in finals])
            answers: list[tuple[_Incoming, FinalAnswer]] = []
            for item in finals:
                verdict = self._final(session, item, rows, stored_ids, answers, ended)
                if verdict is not None:
                    ok, unknown = acks.setdefault(item.device_id, ([], []))
                    (ok if verdict else unknown).append(item.message.msg_id)
            stored = self.commands.store_finals(session, [a for _, a in answers])
            for item, answer in answers:
                if answer.command_id in stored:
                    self._stored(item, answer, rows, ended)
            ack_rows = self._record_acks(session, acks)
            ack_seqs = self._sequences(session, ack_rows) if ack_rows else []
        if self.gate is not None and ended:
            self.gate.revoke(ended)
        self._send(ack_rows, ack_seqs)
        if ended or stages:
            self._notify(ended)

    def _rows(self, session: Session, ids: list[str | None]) -> dict[str, tuple[str, str, str]]:
        """device, kind and state of these commands (those this database has)."""
        wanted = [i for i in dict.fromkeys(ids) if i]
        found: dict[str, tuple[str, str, str]] = {}
        t = CommandRow.__table__.c
        for start in range(0, len(wanted), 500):
            result = session.execute(
                select(t.command_id, t.device_id, t.kind, t.state)
                .where(t.command_id.in_(wanted[start : start + 500]))
            )  # fmt: skip
            found.update((cid, (device, kind, state)) for cid, device, kind, state in result)
        return found

    def _final(
        self,
        session: Session,
        item: _Incoming,
        rows: dict[str, tuple[str, str, str]],
        stored_ids: set[str],
        answers: list[tuple[_Incoming, FinalAnswer]],
        ended: list[str],
    ) -> bool | None:
        """Judge one final response, adding what is to be stored to ``answers``; True:
        acknowledge it, False: acknowledge it as unknown, None: leave it alone."""
        message, response = item.message, item.message.body
        command_id = message.corr_id
        if not self.commands.is_ours(command_id):
            self._drop("foreign", item, f"answers {command_id}, a command of another database")
            return None
        row = rows.get(command_id or "")
        if row is None:
            self._drop("unknown", item, f"answers {command_id}, which this database never sent")
            return False
        device, kind_name, _state = row
        if device != item.device_id:
            self._drop(
                "misaddressed", item, f"answers {command_id}, a command sent to {device}", warn=True
            )
            return None
        kind = KINDS.get(kind_name)
        if not isinstance(response, Response):  # only finals come here
            return None
        error = response.error
        if not kind.answered:
            if error is not None:
                logger.warning(
                    "%s refused %s %s: [%s] %s",
                    device, kind.name, command_id, error.code, error.message,
                )  # fmt: skip
            return None
        if error is not None and error.code == "replayed":
            # A copy delivered twice; the command itself runs (or is published again).
            logger.info("%s: a copy of %s was refused as replayed", device, command_id)
            return None
        if error is not None and error.code in REFUSAL_CODES:
            logger.warning("%s refused %s: [%s] %s", device, command_id, error.code, error.message)
            if self.commands.refuse(session, command_id or "", error.code, error.message):
                ended.append(command_id or "")
            return None
        if message.msg_id in stored_ids:
            return True  # a copy of an answer stored already: acknowledged again
        stored_ids.add(message.msg_id)  # one envelope stores one answer, even twice in a batch
        outcome = kind.judge(response)
        result = outcome.result
        answers.append((item, FinalAnswer(
            command_id or "", message.msg_id, response.status, outcome.state,
            msgspec.json.encode(result).decode("utf-8") if result is not None else None,
            outcome.error_code, outcome.error_message,
        )))  # fmt: skip
        return True

    def _stored(
        self,
        item: _Incoming,
        answer: FinalAnswer,
        rows: dict[str, tuple[str, str, str]],
        ended: list[str],
    ) -> None:
        ended.append(answer.command_id)
        if len(self.stored) >= 100_000:
            self.stored.clear()  # a diagnostic count: bounded in a long-running host
        self.stored[answer.command_id] += 1
        kind_name = rows[answer.command_id][1]
        logger.info(
            "%s answered %s %s: %s", item.device_id, kind_name, answer.command_id, answer.state
        )

    def _write_parts(self, parts: list[_Incoming]) -> list[tuple[_Incoming, bool]]:
        """Outputs parts of this database's benchmarks, written to disk before they are acked:
        (part, True) once written, (part, False) for a job this database has no record of."""
        ours = []
        for item in parts:
            part: OutputsPart = item.message.body  # type: ignore[assignment]
            if self.commands.is_ours(part.job_id):
                ours.append(item)
            else:
                self._drop("foreign", item, f"outputs of {part.job_id}, a job of another database")
        if not ours:
            return []
        with self.commands.store.read() as session:
            rows = self._rows(session, [i.message.body.job_id for i in ours])  # type: ignore[union-attr]
        verdicts = []
        for item in ours:
            part = item.message.body  # type: ignore[assignment]
            row = rows.get(part.job_id)
            if row is None:
                self._drop(
                    "unknown", item, f"outputs of {part.job_id}, never sent by this database"
                )
                verdicts.append((item, False))
                continue
            if row[0] != item.device_id:
                self._drop("misaddressed", item, f"outputs of {part.job_id}, a job of {row[0]}")
                continue
            if self.outputs is not None:
                try:
                    self.outputs.add(part)
                except (IntegrityError, OSError) as exc:
                    logger.warning(
                        "outputs part %d of %s refused: %s", part.index, part.job_id, exc
                    )
                    continue
            verdicts.append((item, True))
        return verdicts

    def _record_acks(
        self, session: Session, acks: dict[str, tuple[list[str], list[str]]]
    ) -> list[Due]:
        news = []
        for device, (ok, unknown) in acks.items():
            ok, unknown = list(dict.fromkeys(ok)), list(dict.fromkeys(unknown))
            for start in range(0, max(len(ok), len(unknown)), ACK_LIMIT):
                body = AckCmd(
                    msg_ids=ok[start : start + ACK_LIMIT],
                    unknown=unknown[start : start + ACK_LIMIT],
                )
                news.append(NewCommand(device, body))
        infos = self.commands.add_in(session, news, state=SENT)  # published once committed
        return [
            Due(i.command_id, i.device_id, i.kind, i.body_json, i.state, None, i.expires_at,
                None, None)
            for i in infos
        ]  # fmt: skip

    def _drop(self, reason: str, item: _Incoming, what: str, *, warn: bool = False) -> None:
        self.dropped[reason] += 1
        key = (reason, item.device_id)
        if key in self._logged and not warn:
            logger.debug("dropped a response of %s (%s): %s", item.device_id, reason, what)
            return
        if len(self._logged) > 10_000:
            self._logged.clear()
        self._logged.add(key)
        logger.warning("dropped a response of %s (%s): %s", item.device_id, reason, what)

    # -- results ---------------------------------------------------------------------------------
    def result_of(self, info: CommandInfo) -> msgspec.Struct:
        """The typed result of a final command; JobFailedError with the device's code else."""
        if info.state != "answered":
            code = info.error_code or info.state
            raise JobFailedError(
                f"{info.kind} {info.job_id} failed on device {info.device_id}: [{code}] "
                f"{info.error_message or 'no error details'}",
                code,
            )
        result = info.result()
        if result is None:
            raise JobFailedError(
                f"{info.kind} {info.job_id}: device {info.device_id} answered without a result",
                "bad_result",
            )
        return result


__all__ = ["CommandDriver", "CommandLink"]
