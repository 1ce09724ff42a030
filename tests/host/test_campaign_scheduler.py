"""The campaign's device scheduler against a scripted fleet (the scheduler is under test, not the
fleet; the command pipeline is the real one, pumped synchronously): every survivor measured on
every device, a failed job retried, a device that stays offline ends its jobs as offline, a
cancelled campaign cancels its open commands. Real agents: tests/e2e/test_campaign_resume.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from host.campaign import CampaignCancelled, CampaignSpec, DeviceScheduler, Prepared
from host.campaign.context import CampaignContext
from host.campaign.events import Emitter
from host.commands import NewCommand
from host.store import Store
from host.store.campaigns import CampaignStore, CandidateInfo
from shared.hashing import sha256_file
from shared.manifest import ArtifactManifest
from shared.messages import BenchmarkCmd, Message
from shared.results import BenchmarkResult, LatencyStats, to_data
from tests.host.fake_fleet import FakeFleet, Reply
from tests.host.fleet_helpers import sample_birth


class ScriptedFleet(FakeFleet):
    """Devices that answer each benchmark with a result (or fail it once when told to)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.sent: list[tuple[str, str]] = []  # (device, model file) of each benchmark
        self.fail_first: set[str] = set()
        self.threads: list[int | None] = []
        self.silent_for: set[str] = set()
        self.files: dict[str, str] = {}

    def offer(
        self, path: Any, manifest: ArtifactManifest | None = None, *, verify: bool = True
    ) -> ArtifactManifest:
        sha = sha256_file(Path(path))
        self.files[sha] = str(path)
        return ArtifactManifest(sha256=sha, size_bytes=Path(path).stat().st_size,
                                format=Path(path).suffix[1:], precision="fp32")  # fmt: skip

    def online(self, device_id: str) -> None:
        self.registry.set_birth(device_id, sample_birth())
        self.registry.set_status(device_id, True)

    def answer(self, name: str, message: Message) -> Reply | None:
        body = message.body
        if not isinstance(body, BenchmarkCmd):
            return "ok", {}, None
        device = message.device_id or ""
        if message.msg_id in {m for _d, m in self.sent_ids}:
            return None  # published again: the first answer stands
        self.sent_ids.append((device, message.msg_id))
        path = self.files.get(body.model.sha256, body.model.sha256)
        self.sent.append((device, path))
        self.threads.append(body.threads)
        if device in self.silent_for:
            return None
        key = f"{device}:{path}"
        if key in self.fail_first:
            self.fail_first.discard(key)
            return "error", {"job_id": body.job_id}, "worker_crashed"
        latency = LatencyStats(mean=1, std=0, min=1, p50=1, p90=1, p95=1, p99=1, max=1)
        return "ok", to_data(BenchmarkResult(
            job_id=body.job_id, model_sha256=body.model.sha256, backend="tflite",
            runtime="fake 1", threads=body.threads, size_bytes=10, load_ms=1.0, warmup_runs=1,
            runs=5, latency_ms=latency, peak_rss_mb=10.0, rss_growth_mb=0.0, metric="accuracy",
            metric_value=0.9,
        )), None  # fmt: skip

    def __post_init__(self) -> None:  # the dataclass hook of FakeFleet, with answers wired
        super().__post_init__()
        self.sent_ids: list[tuple[str, str]] = []
        self.answers = _AnswerAll(self.answer)  # type: ignore[assignment]


class _AnswerAll(dict):  # type: ignore[type-arg]
    """Every device answers with the same function."""

    def __init__(self, answer: Any) -> None:
        super().__init__()
        self._answer = answer

    def get(self, _device: str, _default: Any = None) -> Any:  # type: ignore[override]
        return self._answer


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    with Store(db_url) as opened:
        yield opened


def _fleet(store: Store, *online: str) -> ScriptedFleet:
    fleet = ScriptedFleet(store)
    for device in online:
        fleet.online(device)
    return fleet


def _setup(tmp_path: Path, fleet: ScriptedFleet, **spec_kw: Any) -> tuple[CampaignContext, list]:
    store = fleet.store
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


def _rows(ctx: CampaignContext) -> dict[tuple[str, str], Any]:
    """The selection's rows, read back from what is stored: results typed, as they came."""
    from host.campaign import campaign_rows

    return {(r.device, r.candidate): r for r in campaign_rows(ctx.cstore, "camp")}


def _prepared(tmp_path: Path) -> Prepared:
    # The scheduler reads only the task of the baseline bundle; no model is needed to schedule.
    bundle = SimpleNamespace(task="classification")
    (tmp_path / "eval.npz").write_bytes(b"eval set")  # served, never read here
    return Prepared(bundle=bundle, dataset=None, eval_path=tmp_path / "eval.npz",  # type: ignore[arg-type]
                    baseline_metric=0.95, metric_name="accuracy")  # fmt: skip


def test_every_survivor_is_measured_on_every_device_and_a_failed_job_is_retried_once(
    tmp_path: Path, store: Store
) -> None:
    fleet = _fleet(store, "a", "b")
    fleet.fail_first.add(f"b:{tmp_path / 'c2.tflite'}")
    ctx, survivors = _setup(tmp_path, fleet, retries=1)
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    jobs = {(j.device_id, j.candidate_id): j for j in ctx.cstore.jobs("camp")}
    assert {key: j.status for key, j in jobs.items()} == {
        ("a", "c1"): "ok", ("a", "c2"): "ok", ("b", "c1"): "ok", ("b", "c2"): "ok",
    }  # fmt: skip
    assert jobs[("b", "c2")].attempts == 2 and len(jobs[("b", "c2")].job_ids) == 2
    assert _rows(ctx)[("a", "c1")].metric_value == 0.9
    assert len(fleet.sent) == 5


def test_a_thread_sweep_measures_every_candidate_and_thread_count_as_its_own_variant(
    tmp_path: Path, store: Store
) -> None:
    fleet = _fleet(store, "a", "b")
    ctx, survivors = _setup(tmp_path, fleet, threads=(1, 4))
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    rows = _rows(ctx)
    assert sorted(rows) == [
        (d, f"{c}@t{t}") for d in ("a", "b") for c in ("c1", "c2") for t in (1, 4)
    ]
    for (_device, variant), row in rows.items():
        assert row.ok and row.candidate == variant and row.artifact == variant.split("@")[0]
        assert row.threads == int(variant.split("@t")[1]) and row.runtime == "tflite"
    assert sorted(fleet.threads) == [1, 1, 1, 1, 4, 4, 4, 4]


def test_a_board_without_a_runtime_for_a_format_is_not_sent_candidates_of_that_format(
    tmp_path: Path, store: Store
) -> None:
    fleet = _fleet(store, "a", "b")  # tflite only
    ctx, survivors = _setup(tmp_path, fleet)
    survivors = [survivors[0], replace(survivors[1], format="onnx")]
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    assert sorted((j.device_id, j.candidate_id) for j in ctx.cstore.jobs("camp")) == [
        ("a", "c1"), ("b", "c1"),
    ]  # fmt: skip


def test_the_jobs_of_a_device_that_stays_offline_end_as_offline_with_how_to_resume(
    tmp_path: Path, store: Store
) -> None:
    fleet = _fleet(store, "a")
    ctx, survivors = _setup(tmp_path, fleet, offline_deadline_s=0.2)
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    states = {(j.device_id, j.candidate_id): (j.status, j.error) for j in ctx.cstore.jobs("camp")}
    assert states[("a", "c1")][0] == states[("a", "c2")][0] == "ok"
    for candidate in ("c1", "c2"):
        status, error = states[("b", candidate)]
        assert status == "offline" and "--resume camp" in (error or "")
    assert all(device == "a" for device, _ in fleet.sent)


def test_after_a_restart_a_job_sent_for_one_thread_count_is_adopted_by_that_variant_only(
    tmp_path: Path, store: Store
) -> None:

    fleet = _fleet(store, "a", "b")
    ctx, survivors = _setup(tmp_path, fleet, threads=(1, 4))
    # The run that died sent c1 on 4 threads to "a", and the answer arrived, but it never noted
    # the job id in the campaign.
    commands = fleet.commands.commands
    before = commands.new_id()
    manifest = ArtifactManifest(
        sha256=survivors[0].sha256 or "", size_bytes=2, format="tflite", precision="fp32"
    )
    commands.add([NewCommand("a", BenchmarkCmd(
        job_id=before, model=manifest, threads=4), command_id=before)])  # fmt: skip
    latency = LatencyStats(mean=2, std=0, min=2, p50=2, p90=2, p95=2, p99=2, max=2)
    answered = BenchmarkResult(
        job_id=before, model_sha256=survivors[0].sha256 or "", backend="tflite",
        runtime="fake 1", threads=4, size_bytes=10, load_ms=1.0, warmup_runs=1, runs=5,
        latency_ms=latency, peak_rss_mb=10.0, rss_growth_mb=0.0, metric="accuracy",
        metric_value=0.8,
    )  # fmt: skip
    with commands.store.transaction() as session:
        commands.store_final(
            session, before, response_msg_id="r-before", status="ok", state="answered",
            result=answered, error_code=None, error_message=None,
        )  # fmt: skip
    DeviceScheduler(ctx).measure(survivors, ["a", "b"], _prepared(tmp_path))
    jobs = {(j.device_id, j.candidate_id): j for j in ctx.cstore.jobs("camp")}
    assert jobs[("a", "c1@t4")].job_ids == [before]
    rows = _rows(ctx)
    assert rows[("a", "c1@t4")].metric_value == 0.8  # the adopted job's stored result
    assert before not in jobs[("a", "c1@t1")].job_ids
    assert rows[("a", "c1@t1")].threads == 1
    assert len(fleet.sent) == 7  # every variant but the adopted one


def test_a_cancelled_campaign_cancels_its_open_benchmark_and_stops(
    tmp_path: Path, store: Store
) -> None:
    fleet = _fleet(store, "a")
    fleet.silent_for.add("a")  # the benchmark runs for ever
    ctx, survivors = _setup(tmp_path, fleet)
    threading.Timer(1.0, ctx.cancelled.set).start()
    scheduler = DeviceScheduler(ctx)
    try:  # one device's job, as its thread runs it
        job = _pending(ctx, survivors[0].candidate_id)
        scheduler._run_job(job, survivors[0], _prepared(tmp_path))
    except CampaignCancelled:
        pass
    else:
        raise AssertionError("the cancelled campaign went on")
    [command] = fleet.commands.commands.list(kinds=("benchmark",))
    assert command.state == "cancelled"
    cancels = [p for p in fleet.published if p.name == "cancel"]
    assert [p.message.body.job_id for p in cancels] == [command.command_id]  # type: ignore[union-attr]


def _pending(ctx: CampaignContext, candidate: str = "c1") -> Any:
    ctx.cstore.ensure_job("camp", candidate, "a", 0)
    return next(j for j in ctx.cstore.jobs("camp", "a") if j.candidate_id == candidate)
