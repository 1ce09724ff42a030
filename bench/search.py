"""The per-device search against the exhaustive campaign over the named recipes, in one run.

    python -m bench.search [--quick] [--models resnet18,mobilenetv2,vit] [--out bench/results/search.json]

Two real agents on a private Mosquitto, with different speeds, each on one thread and a CPU of its
own: ``edge-fast`` (CPU 0) and ``edge-slow`` (the last CPU under a cgroup quota of
``--slow-quota`` CPU, joined before the agent starts, so its birth announces the quota and it is a
board class of its own). The search keeps to one thread for the same reason (two shared cores). For each architecture
of bench.models (transformers' classes in the configs of ``SEARCH_PARAMS``: the quick configs at
``--size`` px, a little wider, so that a file takes about a millisecond and the differences between
variants are larger than a runtime's fixed costs and the machine's noise), briefly pretrained on
the digits upsampled to 3 x size x size, with ``--eval-share`` of the 1,797 digits held out as the
eval set (a metric's 95% interval narrows with its size) and recovery without training labels:

1. **exhaustive campaign** over the 13 named recipes (recovery epochs scaled by ``--epoch-scale``),
   every candidate measured on both boards (no screening);
2. **search** per device (host.search) with the same constraints: the metric within
   ``--max-drop`` of the baseline and a per-device p90 budget (``latency_p90_ms<=X@edge-fast``,
   ``...@edge-slow``): ``--latency-share`` of the baseline's p90 on that device and, on the slow
   board, at most ``--squeeze`` times the p90 of the fastest named recipe within the metric bound
   there (the case the search is for: the menu has nothing between what is too slow and what
   loses too much); its
   predictor learns from every stored result except the campaign of the architecture searched
   (leave-one-architecture-out: the campaign's measurements are not the search's to use);
3. per device: the search's choice against the best named recipe under the same constraints
   (host.select on the campaign's rows): p90 ratio and metric difference; board measurements used
   against the campaign's.

Last, the predictor's error on held-out results: (a) K-fold over every result of the run (each
board class seen), (b) each architecture's campaign predicted by a predictor fitted without any
result of that architecture.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shlex
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.goals import GoalRow

logger = logging.getLogger(__name__)

DEFAULT_OUT = Path("bench/results/search.json")
FAST, SLOW = "edge-fast", "edge-slow"
# The shortest period a 0.5 CPU quota allows (quotas are at least 1 ms): a 1 ms inference then
# always meets about one stall, so p90 measures a slower core rather than the luck of the phase.
QUOTA_PERIOD_US = 2_000


# ------------------------------------------------------------------ data

# The quick configs of bench.models at ``--size`` px, wider, the ViT on 8 px patches: about a
# millisecond per fp32 file on one x86 core.
SEARCH_PARAMS: dict[str, dict[str, Any]] = {
    "resnet18": {"hidden_sizes": [32, 64, 128, 256]},
    "mobilenetv2": {"depth_multiplier": 0.5},
    "vit": {"hidden_size": 128, "layers": 4, "heads": 4, "intermediate_size": 256, "patch_size": 8},
}


def digits_rgb(size: int, eval_share: float, seed: int = 0) -> Any:
    """The 1,797 digits upsampled to 3 x size x size, split (seed-fixed) into train, 10%
    validation and ``eval_share`` test (the eval set); labels everywhere."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from sklearn.datasets import load_digits

    from host.data import DataSet, Split

    digits = load_digits()
    x = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    images = x.repeat(1, 3, 1, 1).numpy()
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_test = round(len(labels) * eval_share)
    n_val = round(len(labels) * 0.10)
    test, val, train = (
        order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    )  # fmt: skip

    def split(index: Any) -> Split:
        return Split((images[index],), labels[index])

    return DataSet(f"digits-rgb{size}", split(train), split(val), split(test))


def write_vision_data(path: Path, size: int, eval_share: float) -> Path:
    """The data the campaigns and searches get, as a file of ready splits: train and validation
    without labels (recovery must do without), the eval split with them."""
    import numpy as np

    data = digits_rgb(size, eval_share)
    np.savez(
        path,
        train_x=data.train.inputs[0],
        val_x=data.val.inputs[0],
        test_x=data.test.inputs[0],
        test_y=data.test.labels,
    )
    return path


# ------------------------------------------------------------------ agents


def start_agents(
    broker_url: str, base: str, root: Path, slow_quota: float
) -> tuple[list[Any], list[Any], str]:
    """The fast and the slow agent; the slow one joins its cgroup before exec (see the doc)."""
    from host.demo import make_cpu_quota
    from tests.agents import AgentProcess

    cores = os.cpu_count() or 1
    # Short periods spread the throttling over many small slices: a slower core, as a model of a
    # few milliseconds sees it, rather than a rare long stall that makes p90 a lottery.
    group, why = make_cpu_quota(
        f"edgetailor-bench-{os.getpid()}", slow_quota, period_us=QUOTA_PERIOD_US
    )

    class QuotaAgent(AgentProcess):
        def command(self) -> list[str]:
            inner = super().command()
            if group is None:
                return ["taskset", "-c", str(cores - 1), *inner]
            script = f'echo $$ > {shlex.quote(str(group.path / "cgroup.procs"))} && exec "$@"'
            return ["taskset", "-c", str(cores - 1), "sh", "-c", script, "sh", *inner]

    class PinnedAgent(AgentProcess):
        def command(self) -> list[str]:
            return ["taskset", "-c", "0", *super().command()]

    # One thread each, on a core of its own: on a 2-core machine shared with the host's own
    # compression (and other work), a second thread mostly measures who else is running.
    fast = PinnedAgent(broker_url, FAST, root / FAST, base, ["--threads", "1"])
    slow = QuotaAgent(broker_url, SLOW, root / SLOW, base, ["--threads", "1"])
    agents = [fast, slow]
    for agent in agents:
        agent.start()
    for agent in agents:
        agent.wait_online(timeout=120)
    where = f"CPU {cores - 1}"
    label = f"{where}, {group.label()}" if group is not None else f"{where}, no cgroup ({why})"
    return agents, [group] if group is not None else [], label


# ------------------------------------------------------------------ one architecture


def arch_params(arch: Any, size: int) -> dict[str, Any]:
    return {**arch.quick_params, **SEARCH_PARAMS.get(arch.key, {}), "image_size": size}


def model_spec(arch: Any, size: int) -> str:
    query = "&".join(
        f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in arch_params(arch, size).items()
    )
    return f"{arch.spec}?{query}"


def named_space(path: Path, epoch_scale: float) -> int:
    """The named recipes, recovery epochs scaled, as a campaign search-space file."""
    from bench.models import bench_recipes

    recipes = bench_recipes(False, None, epoch_scale)
    path.write_text(
        json.dumps({"recipes": [{"name": r.name, "steps": r.to_list()} for r in recipes]})
    )
    return len(recipes)


def pretrained(arch: Any, args: argparse.Namespace, work: Path) -> Path:
    import torch

    from bench.models import pretrain
    from host.models import load_model

    weights = work / f"{arch.key}.pt"
    if not weights.is_file():
        bundle = load_model(arch.spec, **arch_params(arch, args.size))
        epochs = max(1, round(arch.epochs * args.pretrain_scale))
        teacher = pretrain(arch, bundle, digits_rgb(args.size, args.eval_share), epochs)
        torch.save(teacher.module.state_dict(), weights)
    return weights


def run_campaign_of(
    arch: Any,
    args: argparse.Namespace,
    store: Any,
    fleet: Any,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Step 1: the exhaustive campaign over the named recipes, and the constraints it implies."""
    from host.campaign import CampaignSpec, campaign_rows, run_campaign
    from host.store.campaigns import CampaignStore

    started = time.perf_counter()
    weights = pretrained(arch, args, work)
    log(f"{arch.key}: pretrained ({time.perf_counter() - started:.0f} s)")
    space = work / f"{arch.key}-named.json"
    recipes = named_space(space, args.epoch_scale)
    cspec = CampaignSpec(
        model=model_spec(arch, args.size), data=args.data, space=str(space),
        devices=(FAST, SLOW), weights=str(weights), runs=args.runs, min_s=args.min_s,
        screen_margin=1.0, eval_samples=args.eval_samples, job_timeout_s=600,
    )  # fmt: skip
    campaign_id = f"named-{arch.key}-{args.run_id}"
    t0 = time.perf_counter()
    run_campaign(cspec, store, fleet, campaign_id=campaign_id, work_dir=work / campaign_id)
    campaign_s = time.perf_counter() - t0
    cstore = CampaignStore(store)
    rows = campaign_rows(cstore, campaign_id)
    jobs = [j for j in cstore.jobs(campaign_id) if j.status in ("ok", "failed")]
    log(f"{arch.key}: campaign {len(rows)} rows, {len(jobs)} board jobs ({campaign_s:.0f} s)")
    baseline = {
        r.device: r.latency_ms.get("p90") for r in rows if r.candidate == "baseline" and r.ok
    }
    if set(baseline) != {FAST, SLOW}:
        raise RuntimeError(f"{arch.key}: the baseline was not measured on both boards: {baseline}")
    budgets = latency_budgets(rows, baseline, args.max_drop, args.latency_share, args.squeeze)
    constraints = [f"metric_drop<={args.max_drop:g}"] + [
        f"latency_p90_ms<={budgets[d]:g}@{d}" for d in (FAST, SLOW)
    ]
    return {
        "arch": arch.key, "model": model_spec(arch, args.size), "weights": str(weights),
        "recipes": recipes, "constraints": constraints, "baseline_p90_ms": baseline,
        "campaign_id": campaign_id,
        "campaign_seconds": round(campaign_s, 1), "campaign_measurements": len(jobs),
        "campaign_jobs": {d: len([j for j in jobs if j.device_id == d]) for d in (FAST, SLOW)},
        "campaign_artifacts": sorted({c.sha256 for c in cstore.candidates(campaign_id) if c.sha256}),
    }  # fmt: skip


def latency_budgets(
    rows: list[Any], baseline: dict[str, float], max_drop: float, share: float, squeeze: float
) -> dict[str, float]:
    """Per device, the p90 budget: ``share`` of the baseline's p90; on the slow board at most
    ``squeeze`` times the p90 of the fastest named recipe whose metric is within ``max_drop`` of
    the baseline's there (point estimates), so that no such recipe fits it."""
    budgets = {d: baseline[d] * share for d in (FAST, SLOW)}
    fitting = [
        r.latency_ms["p90"]
        for r in rows
        if r.ok and r.device == SLOW and r.candidate != "baseline" and r.latency_ms.get("p90")
        and r.metric_drop is not None and r.metric_drop <= max_drop
    ]  # fmt: skip
    if fitting and squeeze > 0:
        budgets[SLOW] = min(budgets[SLOW], squeeze * min(fitting))
    return {d: round(v, 4) for d, v in budgets.items()}


def run_search_of(
    arch: Any,
    done: dict[str, Any],
    args: argparse.Namespace,
    store: Any,
    fleet: Any,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Step 2-3: the search with the same constraints, against the best named recipe."""
    from host.campaign import campaign_rows
    from host.search import SearchSpec, run_search
    from host.search.store import SearchStore
    from host.select import select
    from host.store.campaigns import CampaignStore

    rows = campaign_rows(CampaignStore(store), done["campaign_id"])
    constraints = done["constraints"]
    named = select(rows, constraints, "min_latency", devices=(FAST, SLOW))
    sspec = SearchSpec(
        model=done["model"], data=args.data, devices=(FAST, SLOW),
        constraints=tuple(constraints), objective="min_latency", budget=args.budget,
        trials=args.trials, weights=done["weights"], runs=args.runs, min_s=args.min_s,
        recovery_epochs=args.recovery_epochs, eval_samples=args.eval_samples, runtimes=("tflite",),
        max_prune=0.8, seed=args.seed, job_timeout_s=600, threads=(1,),
    )  # fmt: skip
    search_id = f"search-{arch.key}-{args.run_id}"
    t0 = time.perf_counter()

    def progress(kind: str, data: dict[str, Any]) -> None:
        if kind == "trial":
            log(
                f"  {data['device']} #{data.get('trial')}: {data['decision']} ({data.get('used')}/{data.get('budget')}) {data['reason'][:110]}"
            )

    # The predictor is blind to this architecture's campaign: those are not the search's results.
    outcome = run_search(
        sspec,
        store,
        fleet,
        search_id=search_id,
        work_dir=work / search_id,
        progress=progress,
        predictor_exclude=set(done["campaign_artifacts"]),
    )
    search_s = time.perf_counter() - t0
    devices = {}
    for device in (FAST, SLOW):
        doc = outcome["devices"][device]
        devices[device] = _compare(
            device, doc["selection"], named[device], doc, done["campaign_jobs"][device]
        )
        log(f"{arch.key} {device}: {devices[device]['verdict']}")
    search_shas = {t.sha256 for t in SearchStore(store).trials(search_id) if t.sha256}
    return {
        **done, "search_id": search_id, "search_seconds": round(search_s, 1),
        "search_measurements": sum(d["search_measurements"] for d in devices.values()),
        "devices": devices, "sensitivity": outcome.get("sensitivity"),
        "artifacts": sorted(set(done["campaign_artifacts"]) | search_shas),
    }  # fmt: skip


def _compare(
    device: str, mine: dict[str, Any], theirs: Any, doc: dict[str, Any], campaign_jobs: int
) -> dict[str, Any]:
    cand = (mine or {}).get("candidate") or {}
    search_p90 = (cand.get("latency_ms") or {}).get("p90")
    search_metric = cand.get("metric_value")
    named_row = theirs.candidate
    named_p90 = named_row.latency_ms.get("p90") if named_row is not None else None
    named_metric = named_row.metric_value if named_row is not None else None
    ratio = named_p90 / search_p90 if named_p90 and search_p90 else None
    gain = (
        search_metric - named_metric
        if search_metric is not None and named_metric is not None
        else None
    )
    if search_p90 is None:
        verdict = "search found nothing feasible"
        better, worse = False, named_row is not None
    elif named_row is None:
        verdict = (
            f"named recipes: none feasible; search {cand.get('candidate')} at {search_p90:.3g} ms"
        )
        better, worse = True, False
    else:
        better = (ratio is not None and ratio >= 1.25) or (gain is not None and gain >= 0.01)
        worse = (ratio is not None and ratio < 1.0) and not (gain is not None and gain >= 0.01)
        verdict = (
            f"search {cand.get('candidate')} {search_p90:.3g} ms, metric {search_metric:.4f} vs named "
            f"{named_row.candidate} {named_p90:.3g} ms, {named_metric:.4f}: {ratio:.2f}x"
        )
    return {
        "search_choice": cand.get("candidate"), "search_p90_ms": search_p90, "search_metric": search_metric,
        "named_choice": None if named_row is None else named_row.candidate, "named_p90_ms": named_p90,
        "named_metric": named_metric, "named_reason": theirs.reason, "search_reason": (mine or {}).get("reason"),
        "speedup": ratio, "metric_gain": gain, "better": better, "worse": worse, "verdict": verdict,
        "search_measurements": doc["board_measurements"], "campaign_measurements": campaign_jobs,
        "decisions": doc["decisions"], "measured_vs_predicted": doc["measured_vs_predicted"],
    }  # fmt: skip


# ------------------------------------------------------------------ the predictor's error


def predictor_errors(store: Any, archs: list[dict[str, Any]], seed: int) -> dict[str, Any]:
    """(a) K-fold held-out over every result; (b) leave-one-architecture-out on the campaigns."""
    from host.commands.repository import CommandStore
    from host.search.predictor.data import FeatureCache, board_class_of, training_rows
    from host.search.predictor.features import graph_features
    from host.search.predictor.model import Predictor, _quantile
    from host.search.store import SearchStore
    from host.store.campaigns import CampaignStore
    from shared.results import BenchmarkResult

    sstore = SearchStore(store)
    everything = Predictor(seed).fit(training_rows(store, sstore))
    loao: dict[str, list[float]] = {}
    per_arch: dict[str, dict[str, Any]] = {}
    cstore = CampaignStore(store)
    cache = FeatureCache(sstore)
    for arch in archs:
        blind = Predictor(seed).fit(training_rows(store, sstore, set(arch["artifacts"])))
        errors: dict[str, list[float]] = {}
        jobs = [j for j in cstore.jobs(arch["campaign_id"]) if j.status == "ok" and j.fleet_job_id]
        commands = CommandStore(store).many(j.fleet_job_id or "" for j in jobs)
        for job in jobs:
            stored = commands.get(job.fleet_job_id or "")
            result = stored.result_as(BenchmarkResult) if stored is not None else None
            if result is None:
                continue
            cand = next(
                c
                for c in cstore.candidates(arch["campaign_id"])
                if c.candidate_id == job.candidate_id
            )
            board = board_class_of(store, job.device_id)
            graph = cache.get(cand.sha256 or "", cand.path) or graph_features(cand.path or "")
            from host.search.predictor.data import predict_file

            prediction = predict_file(blind, graph, board, result.threads, "tflite")
            actual = result.latency_ms.p90
            if not prediction.known or not actual:
                continue
            error = abs(prediction.latency_p90_ms - actual) / actual
            errors.setdefault(job.device_id, []).append(error)
            loao.setdefault(job.device_id, []).append(error)
        per_arch[arch["arch"]] = {
            d: {
                "n": len(v),
                "median_rel_error": _quantile(v, 0.5),
                "p90_rel_error": _quantile(v, 0.9),
            }
            for d, v in errors.items()
        }
    return {
        "kfold": everything.error_summary(),
        "leave_one_arch_out": {
            "per_device": {d: {"n": len(v), "median_rel_error": _quantile(v, 0.5), "p90_rel_error": _quantile(v, 0.9)} for d, v in loao.items()},
            "per_arch": per_arch,
        },
    }  # fmt: skip


# ------------------------------------------------------------------ goals


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    rows: list[GoalRow] = []
    better = 0
    never_worse = True
    for arch in report["archs"]:
        wins = [d["better"] for d in arch["devices"].values()]
        worse = any(d["worse"] for d in arch["devices"].values())
        never_worse &= not worse
        better += int(all(wins))
        for device, d in arch["devices"].items():
            rows.append(GoalRow(
                "search", f"{arch['arch']} {device}: searched vs best named recipe", d["verdict"][:110],
                ">= 1.25x faster or >= 1 point better, same constraints", bool(d["better"]),
                baseline=str(d["named_choice"]), ratio=d["speedup"],
            ))  # fmt: skip
        share = arch["search_measurements"] / max(arch["campaign_measurements"], 1)
        rows.append(GoalRow(
            "search", f"{arch['arch']}: board measurements", f"{arch['search_measurements']}",
            "<= 40% of the exhaustive campaign's", share <= 0.4,
            baseline=f"{arch['campaign_measurements']} (campaign)", ratio=share,
        ))  # fmt: skip
    rows.append(GoalRow(
        "search", "architectures where the search wins on every device", f"{better} of {len(report['archs'])}",
        ">= 2 of 3, never worse", better >= 2 and never_worse,
    ))  # fmt: skip
    kfold = report["predictor"]["kfold"]
    for key, cls in (kfold.get("classes") or {}).items():
        med = cls.get("median_rel_error")
        rows.append(GoalRow(
            "search", f"predictor on {cls['describe'][:50]} ({key}), K-fold held-out",
            f"median {med:.1%}, p90 {cls['p90_rel_error']:.1%} (n={cls['held_out']})" if med is not None else "n/a",
            "median <= 10%", med is not None and med <= 0.10,
        ))  # fmt: skip
    for device, d in report["predictor"]["leave_one_arch_out"]["per_device"].items():
        med = d.get("median_rel_error")
        rows.append(GoalRow(
            "search", f"predictor on {device}, an unseen architecture",
            f"median {med:.1%}, p90 {d['p90_rel_error']:.1%} (n={d['n']})" if med is not None else "n/a", "info", None,
        ))  # fmt: skip
    return rows


# ------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> None:
    from rich.console import Console

    from bench.models import ARCHS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--quick", action="store_true", help="one architecture, few trials")
    parser.add_argument("--models", default="resnet18,mobilenetv2,vit")
    parser.add_argument("--trials", type=int, default=10, help="search trials per device")
    parser.add_argument("--budget", type=int, default=5, help="board measurements per device")
    parser.add_argument(
        "--epoch-scale", type=float, default=0.2, help="of the named recipes' epochs"
    )
    parser.add_argument(
        "--recovery-epochs", type=int, default=3, help="each search trial's recovery"
    )
    parser.add_argument(
        "--pretrain-scale", type=float, default=2.0, help="of bench.models' pretraining epochs"
    )
    parser.add_argument("--max-drop", type=float, default=0.02)
    parser.add_argument(
        "--latency-share", type=float, default=0.5, help="p90 budget: share of the baseline's"
    )
    parser.add_argument("--slow-quota", type=float, default=0.5)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--min-s", type=float, default=1.0)
    parser.add_argument("--eval-samples", type=int, default=1000, help="at most, of the eval split")
    parser.add_argument("--size", type=int, default=64, help="input px")
    parser.add_argument(
        "--eval-share", type=float, default=0.35, help="of the 1,797 digits, held out for eval"
    )
    parser.add_argument(
        "--squeeze", type=float, default=0.9,
        help="slow board's p90 budget: at most this times the fastest named recipe within the "
        "metric bound (0: the share of the baseline's only)",
    )  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.trials = "resnet18", min(args.trials, 6)
    args.run_id = uuid.uuid4().hex[:6]
    console = Console(stderr=True)

    def log(message: str) -> None:
        console.log(message)

    logging.basicConfig(level=logging.WARNING)
    for name in ("absl", "torchao", "host.export", "litert_torch"):
        logging.getLogger(name).setLevel(logging.ERROR)
    import torch

    torch.set_num_threads(1)
    from host.fleet import Fleet
    from host.store import Store
    from tests.brokers import MosquittoProcess, free_port

    wanted = [a for a in ARCHS if a.key in args.models.split(",")]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-search-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        broker = MosquittoProcess(work / "mosquitto", port=free_port())
        broker.start()
        base = f"etbench-{args.run_id}"
        agents: list[Any] = []
        groups: list[Any] = []
        try:
            agents, groups, slow_label = start_agents(
                broker.url, base, work / "agents", args.slow_quota
            )
            log(f"agents: {FAST} (CPU 0, 1 thread), {SLOW} ({slow_label}, 1 thread)")
            args.data = str(write_vision_data(work / "digits-rgb.npz", args.size, args.eval_share))
            store = Store(f"sqlite:///{work / 'host.db'}")
            archs = []
            with Fleet(broker.url, base, store=store) as fleet:
                fleet.wait_synced()
                # Every campaign first: each search's predictor then learns from the others'.
                campaigns = [run_campaign_of(a, args, store, fleet, work, log) for a in wanted]
                for arch, done in zip(wanted, campaigns, strict=True):
                    archs.append(run_search_of(arch, done, args, store, fleet, work, log))
            report = {
                "command": "python -m bench.search "
                + " ".join(argv if argv is not None else sys.argv[1:]),
                "cpu": platform.processor() or platform.machine(),
                "slow_profile": slow_label,
                "settings": {
                    k: v for k, v in vars(args).items() if k not in ("out", "workdir", "data")
                },
                "archs": archs,
                "predictor": predictor_errors(store, archs, args.seed),
                "seconds": round(time.perf_counter() - started, 1),
            }
            store.close()
        finally:
            for agent in agents:
                agent.terminate()
            for group in groups:
                group.remove()
            broker.stop()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report["goals"] = [g.to_json() for g in goal_rows(report)]
    args.out.write_text(json.dumps(report, indent=2, default=str))
    from rich.table import Table

    table = Table(title=f"bench.search ({report['seconds']:.0f} s)")
    for column in ("measure", "measured", "baseline", "ratio", "goal", "result"):
        table.add_column(column)
    for g in goal_rows(report):
        table.add_row(
            g.measure,
            g.measured,
            g.baseline,
            "-" if g.ratio is None else f"{g.ratio:.2f}",
            g.goal,
            g.result,
        )
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
