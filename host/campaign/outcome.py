"""Reading a stored campaign back: result rows, the selection, and the document the CLI, the
report and deploy read.

A measured job's row is built here from what is stored as it is: the agent's BenchmarkResult (read
back typed from its command, host.commands), the host's judgement of it (baseline, paired drop
interval, user metric: host.campaign.quality) and the candidate it ran."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from host.campaign.quality import Judgement, result_row
from host.campaign.spec import CampaignError, CampaignSpec
from host.commands.repository import CommandStore
from host.report import json_safe, write_report
from host.select import ResultRow, select
from host.store.campaigns import (
    FINAL_JOB_STATES,
    JOB_OFFLINE,
    JOB_OK,
    JOB_PENDING,
    JOB_RUNNING,
    CampaignStore,
)
from shared.results import BenchmarkResult

if TYPE_CHECKING:
    from host.select import DeviceSelection
    from host.store.campaigns import CampaignJobInfo


def _measured(
    cstore: CampaignStore, campaign_id: str
) -> list[tuple[CampaignJobInfo, ResultRow, BenchmarkResult | None]]:
    """Each ended job with its row, and the agent's result behind it (None: not measured)."""

    campaign = cstore.get_campaign(campaign_id)
    metric = (campaign.state.metric if campaign else None) or "metric"
    candidates = {c.candidate_id: c for c in cstore.candidates(campaign_id)}
    jobs = [j for j in cstore.jobs(campaign_id) if j.status in FINAL_JOB_STATES]
    commands = CommandStore(cstore.store).many(
        j.fleet_job_id for j in jobs if j.status == JOB_OK and j.fleet_job_id
    )
    measured = []
    for job in jobs:
        artifact = job.candidate_id.rsplit("@t", 1)[0]  # a thread variant runs its candidate
        cand = candidates.get(artifact)
        facts = dict(
            recipe=cand.recipe_name if cand else "", format=cand.format if cand else "",
            precision=cand.precision if cand else "",
        )  # fmt: skip
        info = commands.get(job.fleet_job_id or "")
        result = info.result_as(BenchmarkResult) if info is not None else None
        if job.status == JOB_OK and result is not None and job.judgement is not None:
            judgement = msgspec.json.decode(job.judgement, type=Judgement)
            row = result_row(
                result, judgement, candidate=job.candidate_id, artifact=artifact,
                device=job.device_id, **facts,
            )  # fmt: skip
            measured.append((job, row, result))
            continue
        error = job.error or (
            job.status if job.status != JOB_OK else "its stored result cannot be read"
        )
        row = ResultRow.failed(
            candidate=job.candidate_id, device=job.device_id, error=error, metric=metric,
            size_bytes=cand.size_bytes if cand else 0, **facts,
        )  # fmt: skip
        measured.append((job, row, None))
    return measured


def campaign_rows(cstore: CampaignStore, campaign_id: str) -> list[ResultRow]:
    """One select.ResultRow per (candidate, device) job that ended; offline jobs as failed rows."""
    return [row for _job, row, _result in _measured(cstore, campaign_id)]


def campaign_selection(
    cstore: CampaignStore,
    campaign_id: str,
    constraints: Sequence[str] | None = None,
    objective: str | None = None,
) -> tuple[list[ResultRow], dict[str, DeviceSelection]]:

    campaign = load_campaign(cstore, campaign_id)
    spec = CampaignSpec.from_stored(campaign.spec)
    rows = campaign_rows(cstore, campaign_id)
    devices = campaign.state.devices or sorted({r.device for r in rows})
    selections = select(
        rows,
        constraints if constraints is not None else spec.constraints,
        objective or spec.objective,
        devices=devices,
        strict=spec.strict,
    )
    return rows, selections


def load_campaign(cstore: CampaignStore, campaign_id: str) -> Any:
    campaign = cstore.get_campaign(campaign_id)
    if campaign is None:
        known = ", ".join(c.campaign_id for c in cstore.list_campaigns()[-5:]) or "none"
        raise CampaignError(
            f"no campaign {campaign_id!r} in the database {cstore.store.safe_url()}; recent "
            f"ones: {known}; pass the same --db the campaign used"
        )
    return campaign


def campaign_outcome(cstore: CampaignStore, campaign_id: str) -> dict[str, Any]:
    """The JSON document of `edgetailor campaign --json`."""
    campaign = load_campaign(cstore, campaign_id)
    spec = CampaignSpec.from_stored(campaign.spec)
    _rows, selections = campaign_selection(cstore, campaign_id)
    jobs = cstore.jobs(campaign_id)
    candidates = [
        {
            "id": c.candidate_id,
            "recipe": c.recipe_name,
            "steps": c.recipe,
            "format": c.format,
            "precision": c.precision,
            "size_bytes": c.size_bytes,
            "sha256": c.sha256,
            "path": c.path,
            "status": c.status,
            "reason": c.reason,
            **{k: v for k, v in c.host_metrics.items()},
        }
        for c in cstore.candidates(campaign_id)
    ]
    results = []
    transfers = {"fetched": 0, "already_stored": 0}
    for job, row, result in _measured(cstore, campaign_id):
        doc = row.to_dict()
        if result is not None:  # what the board measured beside the figures selection weighs
            doc.update(
                job_id=result.job_id, runtime_version=result.runtime, load_ms=result.load_ms,
                import_ms=result.import_ms,
                invoke_ms=msgspec.to_builtins(result.invoke_ms) if result.invoke_ms else None,
                latency_cv=result.latency_ms.cv, p50_ci=result.latency_ms.p50_ci,
                p90_ci=result.latency_ms.p90_ci, board=result.board,
                transfers=msgspec.to_builtins(result.transfers),
            )  # fmt: skip
            if row.metric != (result.metric or "metric"):  # a user metric, computed here
                doc.update(
                    device_metric=result.metric, device_metric_value=result.metric_value,
                    device_metric_interval=result.metric_interval,
                )  # fmt: skip
            for transfer in result.transfers:
                transfers["already_stored" if transfer.already_stored else "fetched"] += 1
        doc["job_status"] = job.status
        doc["job_ids"] = list(job.job_ids)
        doc["attempts"] = job.attempts
        results.append(doc)
    devices: dict[str, dict[str, Any]] = {}
    for device in campaign.state.devices:
        states = [j.status for j in jobs if j.device_id == device]
        counts = {s: states.count(s) for s in sorted(set(states))}
        if states and all(s == JOB_OFFLINE for s in states):
            status = "offline"
        elif states and all(s == JOB_OK for s in states):
            status = "measured"
        elif any(s in (JOB_PENDING, JOB_RUNNING) for s in states):
            status = "incomplete"
        else:
            status = "partial"
        devices[device] = {"status": status, "jobs": counts}
    selection = {
        device: {
            "candidate": sel.chosen_id,
            "artifact": sel.candidate.artifact_id if sel.candidate else None,
            "runtime": sel.candidate.runtime if sel.candidate else None,
            "threads": sel.candidate.threads if sel.candidate else None,
            "reason": sel.reason,
            "latency_p90_ms": sel.candidate.latency_ms.get("p90") if sel.candidate else None,
            "metric": sel.candidate.metric if sel.candidate else None,
            "metric_value": sel.candidate.metric_value if sel.candidate else None,
            "metric_interval": (
                list(sel.candidate.metric_interval)
                if sel.candidate and sel.candidate.metric_interval
                else None
            ),
            "basis": sel.basis,
            "undecided": {k: list(v) for k, v in sel.undecided.items()},
        }
        for device, sel in selections.items()
    }
    return {
        "campaign": {
            "id": campaign_id,
            "model": spec.model,
            "data": spec.data,
            "space": spec.space,
            "constraints": list(spec.constraints),
            "objective": spec.objective,
            "status": campaign.status,
            "created": campaign.created,
            "baseline_metric": campaign.state.baseline_metric,
            "metric": campaign.state.metric,
            "task": campaign.state.task,
            "task_note": campaign.state.task_note,
            "eval_samples": campaign.state.eval_samples,
            "eval_warnings": list(campaign.state.eval_warnings),
            "strict": spec.strict,
            "work_dir": campaign.state.work_dir,
            "spec": spec.to_dict(),
        },
        "candidates": candidates,
        "results": json_safe(results),
        "devices": devices,
        "transfers": transfers,
        "selection": json_safe(selection),
    }


def write_campaign_report(cstore: CampaignStore, campaign_id: str, out_dir: str | Path) -> Path:
    """The HTML report (results table, Pareto plot per device) of a stored campaign."""

    outcome = campaign_outcome(cstore, campaign_id)
    rows, selections = campaign_selection(cstore, campaign_id)
    meta = dict(outcome["campaign"])
    meta["date"] = meta["created"]
    return write_report(out_dir, meta, rows, selections)
