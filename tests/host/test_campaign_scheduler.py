"""The campaign's device scheduler against a scripted fleet (the scheduler is under test, not the
fleet): every survivor measured on every device, a failed job retried, a device that stays
offline ends its jobs as offline. Real agents: tests/e2e/test_campaign_resume.py."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from host.campaign import CampaignCancelled, CampaignSpec, DeviceScheduler, Prepared
from host.campaign.context import CampaignContext
from host.campaign.events import Emitter
from host.errors import JobFailedError
from host.fleet.devices import DeviceRegistry
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo
from shared.results import BenchmarkResult, LatencyStats
from tests.host.fleet_helpers import sample_birth


@dataclass
class DoneHandle:
    job_id: str
    result_or_error: BenchmarkResult | JobFailedError

    def result(self, timeout: float | None = None) -> BenchmarkResult:
        if isinstance(self.result_or_error, JobFailedError):
            raise self.result_or_error
        return self.result_or_error


@dataclass
class ScriptedFleet:
    registry: DeviceRegistry = field(default_factory=DeviceRegistry)
    sent: list[tuple[str, str]] = field(default_factory=list)
    fail_first: set[str] = field(default_factory=set)
    threads: list[int | None] = field(default_factory=list)

    def offer(self, *_a: Any, **_k: Any) -> None:
        return None

    def submit_benchmark(self, device: str, model_path: Any, **kw: Any) -> DoneHandle:
        job_id = f"job-{len(self.sent)}"
        self.sent.append((device, str(model_path)))
        self.threads.append(kw.get("threads"))
        key = f"{device}:{model_path}"
        if key in self.fail_first:
            self.fail_first.discard(key)
            return DoneHandle(job_id, JobFailedError(f"job {job_id} failed: [worker_crashed]", "x"))
        latency = LatencyStats(mean=1, std=0, min=1, p50=1, p90=1, p95=1, p99=1, max=1)
        return DoneHandle(job_id, BenchmarkResult(
            job_id=job_id, model_sha256="0" * 64, backend="tflite", runtime="fake 1",
            threads=kw.get("threads"),
            size_bytes=10, load_ms=1.0, warmup_runs=1, runs=5, latency_ms=latency,
            peak_rss_mb=10.0, rss_growth_mb=0.0, metric="accuracy", metric_value=0.9,
        ))  # fmt: skip


def _setup(tmp_path: Path, fleet: ScriptedFleet, **spec_kw: Any) -> tuple[CampaignContext, list]:
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    cstore = CampaignStore(store)
    spec = CampaignSpec(model="builtin:mlp", data="builtin:digits", devices=("a", "b"), **spec_kw)
    cstore.create_campaign("camp", spec.to_dict())
    survivors = []
    for position, name in enumerate(("c1", "c2")):
        path = tmp_path / f"{name}.tflite"
        path.write_bytes(name.encode())
        info = CandidateInfo(
            campaign_id="camp", candidate_id=name, position=position, recipe_name=name,
            recipe=[], format="tflite", precision="fp32", status="ok", reason=None,
            sha256=f"{position}" * 64, path=str(path), size_bytes=2, host_metrics={},
            created=time.time(),
        )  # fmt: skip
        cstore.put_candidate(info)
        survivors.append(info)
    ctx = CampaignContext(
        spec=spec, store=store, cstore=cstore, fleet=fleet,  # type: ignore[arg-type]
        campaign_id="camp", work_dir=tmp_path, emit=Emitter(None),
    )  # fmt: skip
    return ctx, survivors


def _prepared(tmp_path: Path) -> Prepared:
    # The scheduler reads only the task of the baseline bundle; no model is needed to schedule.
    bundle = SimpleNamespace(task="classification")
    return Prepared(bundle=bundle, dataset=None, eval_path=tmp_path / "eval.npz",  # type: ignore[arg-type]
                    baseline_metric=0.95, metric_name="accuracy")  # fmt: skip


def test_every_survivor_is_measured_on_every_device_and_a_failed_job_is_retried_once(
    tmp_path: Path,
) -> None:
    fleet = ScriptedFleet()
    for device in ("a", "b"):
        fleet.registry.set_birth(device, sample_birth())
        fleet.registry.set_status(device, True)
    fleet.fail_first.add(f"b:{tmp_path / 'c2.tflite'}")
    ctx, survivors = _setup(tmp_path, fleet, retries=1)
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    jobs = {(j.device_id, j.candidate_id): j for j in ctx.cstore.jobs("camp")}
    assert {key: j.status for key, j in jobs.items()} == {
        ("a", "c1"): "ok", ("a", "c2"): "ok", ("b", "c1"): "ok", ("b", "c2"): "ok",
    }  # fmt: skip
    assert jobs[("b", "c2")].attempts == 2 and len(jobs[("b", "c2")].job_ids) == 2
    assert jobs[("a", "c1")].row["metric_value"] == 0.9
    assert len(fleet.sent) == 5


def test_a_thread_sweep_measures_every_candidate_and_thread_count_as_its_own_variant(
    tmp_path: Path,
) -> None:
    fleet = ScriptedFleet()
    for device in ("a", "b"):
        fleet.registry.set_birth(device, sample_birth())
        fleet.registry.set_status(device, True)
    ctx, survivors = _setup(tmp_path, fleet, threads=(1, 4))
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    rows = {(j.device_id, j.candidate_id): j.row for j in ctx.cstore.jobs("camp")}
    assert sorted(rows) == [
        (d, f"{c}@t{t}") for d in ("a", "b") for c in ("c1", "c2") for t in (1, 4)
    ]
    for (_device, variant), row in rows.items():
        assert row is not None and row["candidate"] == variant
        assert row["artifact"] == variant.split("@")[0]
        assert row["threads"] == int(variant.split("@t")[1]) and row["runtime"] == "tflite"
    assert sorted(fleet.threads) == [1, 1, 1, 1, 4, 4, 4, 4]


def test_a_board_without_a_runtime_for_a_format_is_not_sent_candidates_of_that_format(
    tmp_path: Path,
) -> None:
    fleet = ScriptedFleet()
    for device in ("a", "b"):
        fleet.registry.set_birth(device, sample_birth())  # tflite only
        fleet.registry.set_status(device, True)
    ctx, survivors = _setup(tmp_path, fleet)
    survivors = [survivors[0], replace(survivors[1], format="onnx")]
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    assert sorted((j.device_id, j.candidate_id) for j in ctx.cstore.jobs("camp")) == [
        ("a", "c1"), ("b", "c1"),
    ]  # fmt: skip


def test_the_jobs_of_a_device_that_stays_offline_end_as_offline_with_how_to_resume(
    tmp_path: Path,
) -> None:
    fleet = ScriptedFleet()
    fleet.registry.set_birth("a", sample_birth())
    fleet.registry.set_status("a", True)
    ctx, survivors = _setup(tmp_path, fleet, offline_deadline_s=0.2)
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    states = {(j.device_id, j.candidate_id): (j.status, j.error) for j in ctx.cstore.jobs("camp")}
    assert states[("a", "c1")][0] == states[("a", "c2")][0] == "ok"
    for candidate in ("c1", "c2"):
        status, error = states[("b", candidate)]
        assert status == "offline" and "--resume camp" in (error or "")
    assert all(device == "a" for device, _ in fleet.sent)


def test_after_a_restart_a_job_sent_for_one_thread_count_is_adopted_by_that_variant_only(
    tmp_path: Path,
) -> None:
    from shared.results import to_data

    fleet = ScriptedFleet()
    for device in ("a", "b"):
        fleet.registry.set_birth(device, sample_birth())
        fleet.registry.set_status(device, True)
    ctx, survivors = _setup(tmp_path, fleet, threads=(1, 4))
    # The run that died sent c1 on 4 threads to "a", and the answer arrived, but it never noted
    # the job id in the campaign.
    ctx.store.create_job(
        job_id="job-before", command_msg_id="m-before", device_id="a", kind="benchmark",
        model_sha256=survivors[0].sha256, eval_sha256=None, params={"threads": 4},
    )  # fmt: skip
    latency = LatencyStats(mean=2, std=0, min=2, p50=2, p90=2, p95=2, p99=2, max=2)
    answered = BenchmarkResult(
        job_id="job-before", model_sha256=survivors[0].sha256 or "", backend="tflite",
        runtime="fake 1", threads=4, size_bytes=10, load_ms=1.0, warmup_runs=1, runs=5,
        latency_ms=latency, peak_rss_mb=10.0, rss_growth_mb=0.0, metric="accuracy",
        metric_value=0.8,
    )  # fmt: skip
    ctx.store.record_result(job_id="job-before", response_msg_id="r-before", device_id="a",
                            status="ok", data=to_data(answered))  # fmt: skip
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    jobs = {(j.device_id, j.candidate_id): j for j in ctx.cstore.jobs("camp")}
    assert jobs[("a", "c1@t4")].job_ids == ["job-before"]
    assert jobs[("a", "c1@t4")].row["metric_value"] == 0.8
    assert "job-before" not in jobs[("a", "c1@t1")].job_ids
    assert jobs[("a", "c1@t1")].row["threads"] == 1
    assert len(fleet.sent) == 7  # every variant but the adopted one


def test_a_cancelled_campaign_sends_nothing_more_and_ends_its_open_jobs_as_cancelled(
    tmp_path: Path,
) -> None:
    fleet = ScriptedFleet()
    fleet.registry.set_birth("a", sample_birth())
    fleet.registry.set_status("a", True)
    ctx, survivors = _setup(tmp_path, fleet, retries=0)
    submit = fleet.submit_benchmark

    def submit_then_cancel(*args: Any, **kw: Any) -> DoneHandle:
        handle = submit(*args, **kw)
        ctx.cancelled.set()  # the API's cancel arrives while the first job runs
        return handle

    fleet.submit_benchmark = submit_then_cancel  # type: ignore[method-assign]
    with pytest.raises(CampaignCancelled):
        DeviceScheduler(ctx).measure(survivors, ["a"], _prepared(tmp_path))
    jobs = {j.candidate_id: j for j in ctx.cstore.jobs("camp")}
    assert len(fleet.sent) == 1
    assert jobs["c1"].status == "ok"
    assert jobs["c2"].status == "failed" and jobs["c2"].error == "the campaign was cancelled"
