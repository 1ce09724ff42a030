"""The board half of a campaign: one job at a time per device, devices in parallel.

Per job: wait for the device (up to ``offline_deadline_s``), record the benchmark command
(host.commands: the fleet's command driver publishes it, signed), wait for its answer (time offline
does not count against the job's timeout), retry a failure, and record the result. After a host
restart a job sent by the run that died is adopted: its command is still open in the database, so
the driver publishes it again and its answer is awaited (the agent keeps a finished one in its
outbox until acknowledged) before it is ever sent anew. Cancelling the campaign cancels its open
commands (a row state: the driver sends the device a signed cancel).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace
from pathlib import Path

import msgspec

from host.campaign.candidates import Prepared
from host.campaign.context import CampaignContext
from host.campaign.quality import judge_result
from host.campaign.spec import CampaignCancelled, CampaignError, variant_id
from host.commands.bench import submit_benchmark
from host.commands.repository import CommandInfo
from host.errors import DeviceUnavailableError, JobTimeoutError
from host.export.runtime import describe_io
from host.store.campaigns import (
    FINAL_JOB_STATES,
    JOB_FAILED,
    JOB_OFFLINE,
    JOB_OK,
    JOB_PENDING,
    JOB_RUNNING,
    CampaignJobInfo,
    CandidateInfo,
)
from shared.errors import EdgeTailorError
from shared.messages import OUTPUTS_LIMIT_BYTES
from shared.results import BenchmarkResult

logger = logging.getLogger(__name__)

# On top of the benchmark's own timeout: the transfer, the worker start, the device's queue.
TRANSFER_ALLOWANCE_S = 120.0
POLL_S = 0.5


class DeviceScheduler:
    """Steps 4-5 of a campaign: which devices, and every survivor measured on each."""

    def __init__(self, ctx: CampaignContext, *, device_wait_s: float = 30.0) -> None:
        self.ctx = ctx
        self.device_wait_s = device_wait_s
        self._lock = threading.Lock()
        self._done = 0
        self._total = 0
        # variant id -> (the candidate whose file it runs, thread count or None: the agent's)
        self._variants: dict[str, tuple[str, int | None]] = {}

    # -- 4. devices ----------------------------------------------------------------------------
    def resolve_devices(self) -> list[str]:
        self.ctx.check_cancelled()
        stored = self.ctx.cstore.get_campaign(self.ctx.campaign_id)
        if stored is not None and stored.state.devices:
            return list(stored.state.devices)  # a resumed "all" keeps its original targets
        if not self.ctx.spec.all_devices:
            return list(self.ctx.spec.devices)
        self.ctx.fleet.wait_synced()
        deadline = time.monotonic() + self.device_wait_s
        while True:
            online = sorted(
                d for d, rec in self.ctx.fleet.devices().items() if rec.online and rec.birth
            )
            if online or time.monotonic() > deadline:
                break
            time.sleep(POLL_S)
            self.ctx.check_cancelled()
        if not online:
            raise CampaignError(
                f"--devices all found no online device on {self.ctx.fleet.address} (base topic "
                f"{self.ctx.fleet.topics.base!r}) within {self.device_wait_s:.0f} s; start an agent "
                "(`edgetailor-agent --broker ... --id ...`) or name the devices"
            )
        return online

    # -- 5. measuring --------------------------------------------------------------------------
    def measure(
        self, survivors: list[CandidateInfo], devices: list[str], prepared: Prepared
    ) -> None:
        if prepared.user_metric is not None:
            self._check_outputs_fit(survivors, prepared)
        survivors = self._expand_variants(survivors)
        for device in devices:
            formats = self._device_formats(device)
            for cand in survivors:
                if formats is not None and cand.format not in formats:
                    logger.info(
                        "%s has no runtime for %s models; %s is not measured there",
                        device, cand.format, cand.candidate_id,
                    )  # fmt: skip
                    continue
                self.ctx.cstore.ensure_job(
                    self.ctx.campaign_id, cand.candidate_id, device, cand.position
                )
            for job in self.ctx.cstore.jobs(self.ctx.campaign_id, device):
                if job.status == JOB_OFFLINE:
                    # It never ran; a resume is the user saying the device may be back.
                    self.ctx.cstore.job_retry(
                        self.ctx.campaign_id,
                        job.candidate_id,
                        device,
                        job.error or "device was offline",
                    )
        by_id = {c.candidate_id: c for c in survivors}
        total = len(survivors) * len(devices)
        done = sum(
            1
            for j in self.ctx.cstore.jobs(self.ctx.campaign_id)
            if j.status in FINAL_JOB_STATES and j.candidate_id in by_id
        )
        self.ctx.emit(
            "job",
            f"measuring {len(survivors)} candidates on {len(devices)} devices",
            done=done,
            total=total,
        )
        self._done = done
        self._total = total
        threads = [
            threading.Thread(
                target=self._device_loop,
                args=(device, by_id, prepared),
                name=f"campaign-{device}",
                daemon=True,
            )
            for device in devices
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        # A device loop that saw the cancellation ended its jobs; the campaign ends cancelled.
        self.ctx.check_cancelled()

    def _expand_variants(self, survivors: list[CandidateInfo]) -> list[CandidateInfo]:
        """One (candidate, threads) variant per swept thread count; each is a job of its own."""
        sweep = self.ctx.spec.threads
        counts: tuple[int | None, ...] = sweep or (None,)
        variants = []
        for cand in survivors:
            for index, count in enumerate(counts):
                vid = variant_id(cand.candidate_id, count, sweep)
                self._variants[vid] = (cand.candidate_id, count)
                variants.append(
                    replace(cand, candidate_id=vid, position=cand.position * len(counts) + index)
                )
        return variants

    def _device_formats(self, device: str) -> set[str] | None:
        """The model formats the device's birth says it can run (None: not known yet)."""
        self.ctx.check_cancelled()
        record = self.ctx.fleet.registry.get(device)
        birth = getattr(record, "birth", None) if record is not None else None
        if birth is None or not birth.runtimes:
            return None
        return {fmt for runtime in birth.runtimes for fmt in runtime.formats}

    def _check_outputs_fit(self, survivors: list[CandidateInfo], prepared: Prepared) -> None:
        """A user metric needs the raw eval outputs back: refuse before any job if they cannot
        travel (shared.messages.OUTPUTS_LIMIT_BYTES)."""

        samples = len(prepared.split) if prepared.split is not None else 0
        limit = OUTPUTS_LIMIT_BYTES - 64 * 1024
        for cand in survivors:
            if not cand.path:
                continue
            _inputs, outputs = describe_io(Path(cand.path))
            per_sample = sum(4 * math.prod(max(d, 1) for d in spec.shape[1:]) for spec in outputs)
            if per_sample * samples > limit:
                fits = limit // max(per_sample, 1)
                raise CampaignError(
                    f"--metric needs the raw outputs of the eval set back from each board: "
                    f"{samples} samples x {per_sample} bytes = "
                    f"{per_sample * samples / 2**20:.1f} MiB, over the "
                    f"{OUTPUTS_LIMIT_BYTES / 2**20:.0f} MiB limit; use --eval-samples {fits}"
                )

    def _count_done(self, device: str, candidate: str, status: str) -> None:
        with self._lock:
            self._done += 1
            done = self._done
        self.ctx.emit(
            "job",
            f"{device}: {candidate} {status}",
            device=device,
            candidate=candidate,
            status=status,
            done=done,
            total=self._total,
        )

    def _device_loop(
        self, device: str, by_id: dict[str, CandidateInfo], prepared: Prepared
    ) -> None:
        try:
            jobs = [
                j
                for j in self.ctx.cstore.jobs(self.ctx.campaign_id, device)
                if j.candidate_id in by_id and j.status not in FINAL_JOB_STATES
            ]
            for index, job in enumerate(jobs):
                status = self._run_job(job, by_id[job.candidate_id], prepared)
                if status == JOB_OFFLINE:
                    error = (
                        f"device {device} stayed offline for more than "
                        f"{self.ctx.spec.offline_deadline_s:.0f} s; start its agent and resume "
                        f"with `edgetailor campaign --resume {self.ctx.campaign_id}`"
                    )
                    for rest in jobs[index:]:
                        self.ctx.cstore.job_finished(
                            self.ctx.campaign_id,
                            rest.candidate_id,
                            device,
                            JOB_OFFLINE,
                            error=error,
                        )
                        self._count_done(device, rest.candidate_id, JOB_OFFLINE)
                    return
                self._count_done(device, job.candidate_id, status)
        except Exception as exc:  # one device's bug must not hang the others' campaign
            if isinstance(exc, CampaignCancelled):
                error = str(exc)
            else:
                logger.exception("campaign worker for %s failed", device)
                error = f"host error: {exc}"
            for job in self.ctx.cstore.jobs(self.ctx.campaign_id, device):
                if job.status not in FINAL_JOB_STATES:
                    self.ctx.cstore.job_finished(
                        self.ctx.campaign_id, job.candidate_id, device, JOB_FAILED, error=error
                    )

    def _wait_online(self, device: str) -> bool:
        deadline = time.monotonic() + self.ctx.spec.offline_deadline_s
        while True:
            self.ctx.check_cancelled()
            left = deadline - time.monotonic()
            if self.ctx.fleet.registry.wait_for(device, max(0.0, min(left, POLL_S))) is not None:
                return True
            if left <= 0:
                logger.warning("device %s offline past the deadline", device)
                return False

    def _run_job(self, job: CampaignJobInfo, cand: CandidateInfo, prepared: Prepared) -> str:
        device = job.device_id
        attempts = job.attempts
        last_error = job.error or ""
        if job.status == JOB_PENDING and (orphan := self._unrecorded_job(device, cand)):
            # Sent by an earlier run that died before it could note the job id here.
            self.ctx.cstore.job_sent(self.ctx.campaign_id, cand.candidate_id, device, orphan)
            job = replace(job, status=JOB_RUNNING, fleet_job_id=orphan, attempts=attempts + 1)
            attempts += 1
        if job.status == JOB_RUNNING and job.fleet_job_id:
            # Sent by an earlier host run: its answer may be stored already or still in the
            # agent's outbox (re-sent until acknowledged); do not benchmark it twice.
            self.ctx.emit(
                "job",
                f"{device}: waiting for {cand.candidate_id} sent before the restart",
                device=device,
                candidate=cand.candidate_id,
                status="adopted",
            )
            # The agent may still be fetching from the host run that died: serve its files again.
            self.ctx.check_cancelled()
            self.ctx.fleet.offer(cand.path)
            if prepared.eval_path is not None:
                self.ctx.fleet.offer(prepared.eval_path)
            outcome = self._await_command(job.fleet_job_id, device)
            if isinstance(outcome, CommandInfo) and outcome.state == "answered":
                return self._record(job, cand, prepared, outcome)
            if outcome == JOB_OFFLINE:
                return JOB_OFFLINE
            last_error = (
                self._error_of(outcome)
                if isinstance(outcome, CommandInfo)
                else f"job {job.fleet_job_id} was sent before a restart and never answered"
            )
            # A failure of the adopted job (e.g. its transfer starved while no host served it)
            # gets the same retries as any other.
            self.ctx.cstore.job_retry(self.ctx.campaign_id, cand.candidate_id, device, last_error)
        while attempts <= self.ctx.spec.retries:
            if not self._wait_online(device):
                return JOB_OFFLINE
            held = self.ctx.cstore.held(device)
            if cand.sha256 in held:
                logger.info(
                    "%s already holds %s; it will not be fetched again", device, cand.sha256[:12]
                )
            self.ctx.check_cancelled()
            try:
                command_id = submit_benchmark(
                    self.ctx.fleet,
                    device,
                    cand.path,
                    eval_path=prepared.eval_path,
                    threads=self._variants.get(cand.candidate_id, (cand.candidate_id, None))[1],
                    runs=self.ctx.spec.runs,
                    timeout_s=self.ctx.spec.job_timeout_s,
                    warmup_s=self.ctx.spec.warmup_s,
                    min_s=self.ctx.spec.min_s,
                    task=prepared.task,
                    return_outputs=prepared.user_metric is not None,
                )
            except DeviceUnavailableError:
                continue  # went offline between the wait and the send: wait again
            attempts += 1
            self.ctx.cstore.job_sent(self.ctx.campaign_id, cand.candidate_id, device, command_id)
            self.ctx.emit(
                "job",
                f"{device}: {cand.candidate_id} sent (attempt {attempts})",
                device=device,
                candidate=cand.candidate_id,
                status="sent",
            )
            outcome = self._await_command(command_id, device)
            if outcome == JOB_OFFLINE:
                return JOB_OFFLINE
            if outcome is None:
                last_error = (
                    f"no answer within {self.ctx.spec.job_timeout_s + TRANSFER_ALLOWANCE_S:.0f} s"
                    f" (job {command_id})"
                )
            elif isinstance(outcome, CommandInfo) and outcome.state == "answered":
                return self._record(job, cand, prepared, outcome)
            else:
                last_error = self._error_of(outcome)
            if attempts <= self.ctx.spec.retries:
                logger.warning("%s on %s: %s; retrying", cand.candidate_id, device, last_error)
                self.ctx.cstore.job_retry(
                    self.ctx.campaign_id, cand.candidate_id, device, last_error
                )
        self.ctx.cstore.job_finished(
            self.ctx.campaign_id, cand.candidate_id, device, JOB_FAILED, error=last_error
        )
        return JOB_FAILED

    @staticmethod
    def _error_of(info: CommandInfo | str | None) -> str:
        if not isinstance(info, CommandInfo):
            return "failed"
        return (
            f"job {info.command_id} failed on device {info.device_id}: "
            f"[{info.error_code or info.state}] {info.error_message or 'no error details'}"
        )

    def _unrecorded_job(self, device: str, cand: CandidateInfo) -> str | None:
        campaign = self.ctx.cstore.get_campaign(self.ctx.campaign_id)
        if campaign is None or cand.sha256 is None:
            return None
        known = {jid for j in self.ctx.cstore.jobs(self.ctx.campaign_id) for jid in j.job_ids}
        # Variants of one file differ only in their thread count: adopt only the job of this one.
        threads = self._variants.get(cand.candidate_id, (cand.candidate_id, None))[1]
        for command in self.ctx.fleet.commands.commands.list(
            device_id=device, kinds=("benchmark",), since=campaign.created
        ):
            if (
                command.model_sha256 == cand.sha256
                and getattr(command.body(), "threads", None) == threads
                and command.command_id not in known
            ):
                return command.command_id
        return None

    def _await_command(self, command_id: str, device: str) -> CommandInfo | str | None:
        """The final command; JOB_OFFLINE when the device stayed away; None: no answer in time
        (the command is cancelled then, so it cannot run later unasked).

        Time while the device is offline does not count against the job's timeout: the agent
        journals the job and runs it again when it restarts.
        """
        commands = self.ctx.fleet.commands
        budget = self.ctx.spec.job_timeout_s + TRANSFER_ALLOWANCE_S
        offline_since: float | None = None
        last = time.monotonic()
        while True:
            if self.ctx.cancelled.is_set():
                commands.cancel(command_id)
                raise CampaignCancelled("the campaign was cancelled")
            try:
                return commands.wait(command_id, POLL_S)
            except JobTimeoutError:
                pass
            now = time.monotonic()
            record = self.ctx.fleet.registry.get(device)
            if record is not None and not record.online:
                offline_since = offline_since or now
                if now - offline_since > self.ctx.spec.offline_deadline_s:
                    return JOB_OFFLINE
            else:
                offline_since = None
                budget -= now - last
                if budget <= 0:
                    commands.cancel(command_id)
                    return None
            last = now

    def _record(
        self, job: CampaignJobInfo, cand: CandidateInfo, prepared: Prepared, info: CommandInfo
    ) -> str:
        """Judge an answered benchmark and note the judgement beside the job; the result stays
        the agent's BenchmarkResult, stored once with its command."""

        result = info.result_as(BenchmarkResult)
        try:
            if result is None:
                raise CampaignError(f"job {info.command_id} answered without a result")
            judgement = judge_result(result, cand, job.device_id, prepared, self.ctx.fleet)
        except EdgeTailorError as exc:  # a user metric that fails, outputs that never came
            error = str(exc)
            logger.warning("%s on %s: %s", cand.candidate_id, job.device_id, error)
            self.ctx.cstore.job_finished(
                self.ctx.campaign_id, cand.candidate_id, job.device_id, JOB_FAILED, error=error
            )
            return JOB_FAILED
        self.ctx.cstore.mark_held(job.device_id, [t.sha256 for t in result.transfers])
        self.ctx.cstore.job_finished(
            self.ctx.campaign_id, cand.candidate_id, job.device_id, JOB_OK,
            judgement=msgspec.json.encode(judgement).decode("utf-8"),
        )  # fmt: skip
        return JOB_OK
