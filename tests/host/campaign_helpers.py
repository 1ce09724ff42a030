"""Stored campaign results for tests, as a campaign stores them: the candidate, the benchmark
command with the agent's BenchmarkResult as its stored answer, and the host's judgement beside
the campaign's job."""

from __future__ import annotations

import time

import msgspec

from host.campaign.quality import Judgement
from host.commands import CommandStore, NewCommand
from host.select import ResultRow
from host.store import Store
from host.store.campaigns import JOB_OK, CampaignStore, CandidateInfo
from shared.manifest import ArtifactManifest
from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult, LatencyStats


def store_measured(store: Store, campaign_id: str, row: ResultRow, position: int) -> str:
    """Store ``row``'s figures as one measured job of ``campaign_id``; returns its command id."""
    cstore = CampaignStore(store)
    known = {c.candidate_id: c for c in cstore.candidates(campaign_id)}
    sha = known[row.candidate].sha256 if row.candidate in known else f"{position:064x}"
    if row.candidate not in known:  # a candidate is one file, whichever device measures it
        cstore.put_candidate(CandidateInfo(
            campaign_id=campaign_id, candidate_id=row.candidate, position=position,
            recipe_name=row.recipe, recipe=[], format=row.format, precision=row.precision,
            status="ok", reason=None, sha256=sha, path=None, size_bytes=row.size_bytes,
            host_metrics={}, created=time.time(),
        ))  # fmt: skip
    command_id = store_benchmark(store, row, sha)
    cstore.ensure_job(campaign_id, row.candidate, row.device, position)
    cstore.job_sent(campaign_id, row.candidate, row.device, command_id)
    judgement = Judgement(baseline_metric=row.baseline_metric)
    cstore.job_finished(
        campaign_id, row.candidate, row.device, JOB_OK,
        judgement=msgspec.json.encode(judgement).decode("utf-8"),
    )  # fmt: skip
    return command_id


def store_benchmark(store: Store, row: ResultRow, sha: str) -> str:
    """A benchmark command to ``row.device`` answered with ``row``'s figures, as the fleet stores
    it; returns its command id."""
    commands = CommandStore(store)
    p90 = row.latency_ms["p90"]
    figures = {"mean": p90, "std": 0.0, "min": p90, "p50": p90, "p95": p90, "p99": p90,
               "max": p90, **row.latency_ms}  # fmt: skip
    model = ArtifactManifest(sha256=sha or "0" * 64, size_bytes=row.size_bytes, format=row.format,
                             precision=row.precision)  # fmt: skip
    command_id = commands.new_id()
    result = BenchmarkResult(
        job_id=command_id, model_sha256=sha or "0" * 64, backend=row.format, runtime="test 1",
        threads=row.threads, size_bytes=row.size_bytes, load_ms=1.0, warmup_runs=1, runs=10,
        latency_ms=LatencyStats(**figures), peak_rss_mb=row.peak_rss_mb, rss_growth_mb=0.0,
        metric=row.metric, metric_value=row.metric_value,
    )  # fmt: skip
    commands.add([NewCommand(row.device, BenchmarkCmd(job_id=command_id, model=model),
                             command_id=command_id)])  # fmt: skip
    with store.transaction() as session:
        commands.store_final(
            session, command_id, response_msg_id=f"r-{command_id}", status="ok",
            state="answered", result=result, error_code=None, error_message=None,
        )  # fmt: skip
    return command_id
