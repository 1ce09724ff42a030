"""The benchmark worker: a separate process that loads one model with its runtime and measures it.

Run as ``python -m device_agent.bench.worker JOB.json RESULT.json`` by device_agent.bench.runner,
under resource limits. It is the only process that imports numpy and a runtime, so a model that
crashes the runtime takes down this process, not the agent. It writes its result (or a typed error)
as JSON to RESULT.json; no pickle crosses the process boundary.

Measured: load time (construct + allocate), warm-up (at least ``warmup_runs`` and ``warmup_s``),
timed runs (at least ``runs`` and ``min_s``, on the first eval sample where there is one), latency
statistics, peak RSS and RSS growth of this process, and with eval data the task's metric scored by
shared.scoring -- the functions the host scores with -- against labels ``y`` or the reference
outputs ``ref``, with its sample count, 95% interval and per-sample scores, plus the eval set's
warnings. The task comes from the job, else from the eval file's ``task`` entry. With
``outputs_path`` every output of every eval sample is also written there (bounded by
``max_outputs_bytes``) for a metric the host computes. Board state is recorded before loading and
after the timed runs.

With ``"mode": "health"`` in the job it runs a deploy's health check instead (:func:`run_health`):
the model loads, every output on the eval inputs (synthetic ones only when none are shipped) is
finite, the p90 latency of ``health_runs`` runs is within ``latency_budget_ms``, and the metric is
at least ``min_metric``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from device_agent.backends import LoadedModel, TensorInfo, discover, shaped_for
from device_agent.errors import JobError
from device_agent.telemetry import board_state
from shared.errors import EdgeTailorError
from shared.latency import latency_spread

logger = logging.getLogger(__name__)

_MB = 1024 * 1024
# Raw eval outputs a job may send back for a host-side metric (shared.results.OUTPUTS_LIMIT_BYTES).
MAX_OUTPUTS_BYTES = 8 * _MB


def _rss_mb() -> float:
    return psutil.Process().memory_info().rss / _MB


def _peak_rss_mb() -> float:
    # ru_maxrss is in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _to_model_input(sample: Any, spec: TensorInfo) -> Any:
    """One sample shaped and typed for ``spec``; float data is quantized for integer inputs."""
    import numpy as np

    array = np.asarray(sample)
    size = int(np.prod(spec.shape)) if spec.shape else 1
    if array.size != size:
        raise JobError(
            "eval_data_mismatch",
            f"an eval sample has {array.size} values but model input {spec.name!r} has shape "
            f"{list(spec.shape)}; ship samples shaped like one model input",
        )
    return shaped_for(array, spec)


def _to_float(output: Any, spec: TensorInfo) -> Any:
    import numpy as np

    array = np.asarray(output)
    if spec.scale and np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) - spec.zero_point) * spec.scale
    return array.astype(np.float32, copy=False)


def _load_eval(path: str) -> tuple[list[Any], Any, Any, str | None]:
    """(inputs, labels y, reference outputs ref, task) of an eval npz; the task the host wrote."""
    import numpy as np

    with np.load(path, allow_pickle=False) as data:
        names = set(data.files)
        if "x" in names:
            inputs = [data["x"]]
        else:
            count = 0
            while f"x{count}" in names:
                count += 1
            if count == 0:
                raise JobError(
                    "eval_data_invalid", "eval npz has neither 'x' nor 'x0', 'x1', ... arrays"
                )
            inputs = [data[f"x{i}"] for i in range(count)]
        labels = data["y"] if "y" in names else None
        ref = data["ref"] if "ref" in names else None
        task = str(data["task"].reshape(-1)[0]) if "task" in names else None
    lengths = {len(a) for a in inputs} | ({len(labels)} if labels is not None else set())
    if ref is not None:
        lengths.add(len(ref))
    if len(lengths) != 1:
        raise JobError(
            "eval_data_invalid", f"eval arrays disagree on the sample count: {sorted(lengths)}"
        )
    return inputs, labels, ref, task


def _latency_stats(samples_ms: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(samples_ms, dtype=np.float64)
    pct = np.percentile(arr, [50, 90, 95, 99])
    return {
        "mean": round(float(arr.mean()), 6),
        "std": round(float(arr.std()), 6),
        "min": round(float(arr.min()), 6),
        "p50": round(float(pct[0]), 6),
        "p90": round(float(pct[1]), 6),
        "p95": round(float(pct[2]), 6),
        "p99": round(float(pct[3]), 6),
        "max": round(float(arr.max()), 6),
    }


def input_order(model: LoadedModel) -> list[int]:
    """Model input positions in the order of the forward() arguments (eval arrays x0, x1, ...).

    litert-torch names TFLite inputs ``..._args_{i}`` but the interpreter may list them in another
    order; the host sorts them the same way (host/export/runtime.py), so x0 feeds ``args_0`` on
    both sides. Inputs without such a name keep their place after the named ones.
    """

    def key(position: int) -> tuple[int, int]:
        match = re.search(r"args_(\d+)", model.inputs[position].name)
        return (int(match.group(1)) if match else 1 << 30, position)

    return sorted(range(len(model.inputs)), key=key)


def _looks_like_mask(spec: TensorInfo, position: int, model: LoadedModel) -> bool:
    """An integer input named like a mask, or the second of two same-shaped integer inputs (token
    ids, then their attention mask: the order of every BERT-family encoder)."""
    import numpy as np

    name = spec.name.lower()
    if "mask" in name:
        return True
    if any(word in name for word in ("type", "segment", "position", "ids")):
        return False
    # Quantized inputs (with a scale) are numbers, not ids or masks.
    integer = [
        i
        for i in input_order(model)
        if np.issubdtype(np.dtype(model.inputs[i].dtype), np.integer) and not model.inputs[i].scale
    ]
    return (
        len(integer) >= 2
        and position == integer[1]
        and model.inputs[integer[0]].shape == spec.shape
    )


def _synthetic_inputs(model: LoadedModel) -> list[Any]:
    """Inputs for a model that came without eval data: normal floats, masks of ones, ids of zero.

    An all-zero attention mask makes every softmax over the sequence 0/0, so masks get ones.
    """
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = []
    for position, spec in enumerate(model.inputs):
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds.append(rng.standard_normal(spec.shape).astype(dtype))
        elif dtype == np.bool_ or (not spec.scale and _looks_like_mask(spec, position, model)):
            feeds.append(np.ones(spec.shape, dtype=dtype))
        else:
            feeds.append(np.zeros(spec.shape, dtype=dtype))
    return feeds


def describe_feeds(model: LoadedModel, feeds: list[Any]) -> str:
    """``x0 int32[1, 16] in [0, 2043], x1 ...``: what went into a run, for error messages."""
    import numpy as np

    parts = []
    for arg, position in enumerate(input_order(model)):
        value = np.asarray(feeds[position])
        if value.size == 0:
            span = "empty"
        elif np.all(value == value.reshape(-1)[0]):
            span = f"all {value.reshape(-1)[0].item()!r}"
        else:
            span = f"in [{value.min().item()!r}, {value.max().item()!r}]"
        parts.append(f"x{arg} {value.dtype}{list(value.shape)} {span}")
    return ", ".join(parts)


class EvalRun:
    """The eval set run through a loaded model, sample by sample, in the model's input order."""

    def __init__(self, model: LoadedModel, path: str, limit: int | None) -> None:
        self.model = model
        self.inputs, self.labels, self.ref, self.task = _load_eval(path)
        if len(self.inputs) != len(model.inputs):
            raise JobError(
                "eval_data_mismatch",
                f"eval data has {len(self.inputs)} input arrays, the model has "
                f"{len(model.inputs)} inputs",
            )
        self.order = input_order(model)
        total = len(self.inputs[0])
        self.count = total if limit is None else min(limit, total)

    def feeds(self, index: int) -> list[Any]:
        feeds: list[Any] = [None] * len(self.model.inputs)
        for array, position in zip(self.inputs, self.order, strict=True):
            feeds[position] = _to_model_input(array[index], self.model.inputs[position])
        return feeds


def _stack(samples: list[Any]) -> Any:
    """Per-sample outputs joined along the batch axis, as the host's runner joins them."""
    import numpy as np

    if samples and np.ndim(samples[0]) >= 1 and np.shape(samples[0])[0] == 1:
        return np.concatenate(samples)
    return np.stack(samples)


def _evaluate(
    model: LoadedModel,
    path: str,
    limit: int | None,
    *,
    task: str | None = None,
    outputs_path: str | None = None,
    max_outputs_bytes: int = MAX_OUTPUTS_BYTES,
    on_outputs: Callable[[int, list[Any], list[Any]], None] | None = None,
) -> tuple[dict[str, Any], list[Any] | None]:
    """Score the model on the eval set with shared.scoring, as the host scores the same file.

    Returns the metric fields of a result and the feeds of the first sample (real inputs for the
    timed runs). With ``outputs_path`` every output of every sample is written there as an npz
    (``out0``, ``out1``, ...) for the host to score with a metric of its own.
    """
    import numpy as np

    from shared import scoring

    run = EvalRun(model, path, limit)
    # Eval files written before tasks were recorded were always scored as a classifier's.
    task = task or run.task or "classification"
    if task not in scoring.TASKS:
        raise JobError(
            "eval_data_invalid",
            f"the eval data names task {task!r}; use one of {', '.join(scoring.TASKS)}",
        )
    first_outputs: list[Any] = []
    kept: list[list[Any]] = [[] for _ in model.outputs] if outputs_path else []
    first_feeds: list[Any] | None = None
    for i in range(run.count):
        feeds = run.feeds(i)
        if first_feeds is None:
            first_feeds = feeds
        outputs = model.run(feeds)
        if on_outputs is not None:
            on_outputs(i, feeds, outputs)
        floats = [_to_float(out, spec) for out, spec in zip(outputs, model.outputs, strict=False)]
        first_outputs.append(floats[0])
        if outputs_path:
            if i == 0:
                _check_outputs_size(floats, run.count, max_outputs_bytes)
            for store, value in zip(kept, floats, strict=False):
                store.append(value)
    if outputs_path:
        arrays = {f"out{k}": _stack(values) for k, values in enumerate(kept)}
        with open(outputs_path, "wb") as handle:
            np.savez(handle, **arrays)
    result: dict[str, Any] = {"eval_samples": run.count, "task": task}
    labels = None if run.labels is None else run.labels[: run.count]
    ref = None if run.ref is None else run.ref[: run.count]
    result["eval_warnings"] = scoring.eval_warnings(run.count, labels, ref, task)
    if run.count == 0 or (labels is None and ref is None):
        return result, first_feeds
    try:
        scored = scoring.score(_stack(first_outputs), labels, ref, task)
    except scoring.ScoringError as exc:
        raise JobError("eval_data_mismatch", f"cannot score the eval set: {exc}") from exc
    result.update(scored.to_dict())
    if scored.per_sample is not None:
        result["sample_scores"] = scored.per_sample
    if scored.name == "accuracy":
        result["accuracy"] = scored.value
    return result, first_feeds


def _check_outputs_size(first: list[Any], count: int, limit: int) -> None:
    per_sample = sum(int(value.nbytes) for value in first)
    total = per_sample * count
    if total > limit:
        fits = max(limit // max(per_sample, 1), 0)
        raise JobError(
            "outputs_too_large",
            f"the raw outputs of {count} eval samples are {total / _MB:.1f} MiB, over the "
            f"{limit / _MB:.0f} MiB that may travel back to the host; ship at most {fits} samples "
            "(--eval-samples) or score with a built-in metric on the board",
        )


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    backends = discover()
    backend = backends.get(job["model_format"])
    board_before = board_state()
    rss_before = _rss_mb()
    started = time.perf_counter()
    import_runtime = getattr(backend, "import_runtime", None)
    try:
        if import_runtime is not None:
            import_runtime()
        imported = time.perf_counter()
        model = backend.load(job["model_path"], job.get("threads"))
    except EdgeTailorError:
        raise
    except Exception as exc:
        raise JobError(
            "model_load_failed", f"{backend.name} could not load the model: {exc}"
        ) from exc
    import_ms = (imported - started) * 1000.0 if import_runtime is not None else None
    load_ms = (time.perf_counter() - imported) * 1000.0

    metrics: dict[str, Any] = {"eval_samples": 0}
    feeds: list[Any] | None = None
    if job.get("eval_path"):
        metrics, feeds = _evaluate(
            model,
            job["eval_path"],
            job.get("eval_limit"),
            task=job.get("task"),
            outputs_path=job.get("outputs_path"),
            max_outputs_bytes=int(job.get("max_outputs_bytes") or MAX_OUTPUTS_BYTES),
        )
    # Timed on a real eval sample where there is one: some models' cost depends on their input.
    if feeds is None:
        feeds = _synthetic_inputs(model)

    warmup_runs = 0
    deadline = time.perf_counter() + job["warmup_s"]
    while warmup_runs < job["warmup_runs"] or time.perf_counter() < deadline:
        model.run(feeds)
        warmup_runs += 1

    samples: list[float] = []
    deadline = time.perf_counter() + job["min_s"]
    while len(samples) < job["runs"] or time.perf_counter() < deadline:
        t0 = time.perf_counter()
        model.run(feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)

    invoke_stats = None
    if model.prepare is not None:
        invoke = model.prepare(feeds)
        invoke()  # the first call after binding may set up buffers
        bare: list[float] = []
        deadline = time.perf_counter() + job["min_s"]
        while len(bare) < job["runs"] or time.perf_counter() < deadline:
            t0 = time.perf_counter()
            invoke()
            bare.append((time.perf_counter() - t0) * 1000.0)
        invoke_stats = {**_latency_stats(bare), **latency_spread(bare)}

    board = {"before": board_before, "after": board_state()}
    try:
        board["cpu_affinity"] = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        pass
    return {
        "job_id": job["job_id"],
        "model_sha256": job["model_sha256"],
        "backend": backend.name,
        "runtime": model.runtime,
        "threads": job.get("threads"),
        "size_bytes": os.path.getsize(job["model_path"]),
        "load_ms": round(load_ms, 3),
        "import_ms": None if import_ms is None else round(import_ms, 3),
        "warmup_runs": warmup_runs,
        "runs": len(samples),
        "latency_ms": {**_latency_stats(samples), **latency_spread(samples)},
        "invoke_ms": invoke_stats,
        "peak_rss_mb": round(_peak_rss_mb(), 2),
        "rss_growth_mb": round(_rss_mb() - rss_before, 2),
        "board": board,
        **metrics,
    }


def _nonfinite_detail(outputs: list[Any], model: LoadedModel) -> str | None:
    """``output 0: 384 of 384 values NaN`` for the first output with NaN/inf, else None."""
    import numpy as np

    for k, (out, spec) in enumerate(zip(outputs, model.outputs, strict=False)):
        values = _to_float(out, spec)
        bad = ~np.isfinite(values)
        if np.any(bad):
            kind = "NaN" if np.any(np.isnan(values)) else "infinite"
            return f"output {k} ({spec.name}): {int(bad.sum())} of {values.size} values {kind}"
    return None


def run_health(job: dict[str, Any]) -> dict[str, Any]:
    """A deploy's health check of one staged model; returns a HealthReport as a dict.

    It runs the shipped eval inputs (synthetic ones only when the deploy ships none), so a model
    is judged on the inputs it will see, and a failure names the input that produced it.
    """
    backend = discover().get(job["model_format"])
    checks: dict[str, bool] = {}
    problems: list[str] = []
    try:
        model = backend.load(job["model_path"], job.get("threads"))
    except Exception as exc:  # noqa: BLE001 -- any load failure is a failed health check
        return {
            "passed": False,
            "checks": {"loads": False},
            "detail": f"{backend.name} could not load the model: {exc}"[:3000],
        }
    checks["loads"] = True

    nonfinite: dict[str, Any] = {"runs": 0, "bad": 0, "first": None}

    def count_nonfinite(index: int | None, feeds: list[Any], outputs: list[Any]) -> None:
        nonfinite["runs"] += 1
        detail = _nonfinite_detail(outputs, model)
        if detail is not None:
            nonfinite["bad"] += 1
            if nonfinite["first"] is None:
                source = "synthetic input" if index is None else f"eval sample {index}"
                nonfinite["first"] = f"{source} ({describe_feeds(model, feeds)}) gave {detail}"

    metrics: dict[str, Any] = {}
    feeds: list[Any] | None = None
    if job.get("eval_path"):
        metrics, feeds = _evaluate(
            model,
            job["eval_path"],
            job.get("eval_limit"),
            task=job.get("task"),
            on_outputs=count_nonfinite,
        )
    if feeds is None:
        feeds = _synthetic_inputs(model)
        count_nonfinite(None, feeds, model.run(feeds))  # also the warm-up run
    else:
        model.run(feeds)  # warm-up
    checks["finite_outputs"] = nonfinite["bad"] == 0
    if not checks["finite_outputs"]:
        problems.append(
            f"{nonfinite['bad']} of {nonfinite['runs']} runs produced NaN or infinite outputs; "
            f"first: {nonfinite['first']}"
        )

    samples: list[float] = []
    for _ in range(int(job.get("health_runs") or 1)):
        t0 = time.perf_counter()
        model.run(feeds)
        samples.append((time.perf_counter() - t0) * 1000.0)
    p90 = _latency_stats(samples)["p90"]
    budget = job.get("latency_budget_ms")
    if budget is not None:
        checks["latency_within_budget"] = p90 <= float(budget)
        if not checks["latency_within_budget"]:
            problems.append(f"p90 latency {p90:.3f} ms exceeds the budget of {float(budget):g} ms")

    metric, value = metrics.get("metric"), metrics.get("metric_value")
    floor = job.get("min_metric")
    if floor is not None:
        checks["metric_at_least"] = value is not None and value >= float(floor)
        if not checks["metric_at_least"]:
            problems.append(
                f"{metric or 'metric'} {value} is below the minimum {float(floor):g}"
                if value is not None
                else "no metric: the deploy asks for min_metric but ships no labelled eval data"
            )
    return {
        "passed": all(checks.values()),
        "checks": checks,
        "latency_p90_ms": p90,
        "metric": metric,
        "metric_value": value,
        "detail": ("; ".join(problems) or "all checks passed")[:4000],
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m device_agent.bench.worker JOB.json RESULT.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    job_path, result_path = Path(args[0]), Path(args[1])
    job = json.loads(job_path.read_text("utf-8"))
    try:
        run = run_health if job.get("mode") == "health" else run_job
        outcome: dict[str, Any] = {"ok": True, "result": run(job)}
    except JobError as exc:
        outcome = {"ok": False, "error": {"code": exc.code, "message": exc.message}}
    except EdgeTailorError as exc:
        outcome = {"ok": False, "error": {"code": "bench_failed", "message": str(exc)}}
    except MemoryError as exc:
        outcome = {
            "ok": False,
            "error": {"code": "out_of_memory", "message": f"worker ran out of memory: {exc}"},
        }
    except Exception as exc:  # noqa: BLE001 -- every runtime failure becomes a typed error
        # Runtimes turn a failed allocation (RLIMIT_AS) into their own exception types.
        text = str(exc)
        code = "out_of_memory" if "Failed to allocate" in text or "bad_alloc" in text else ""
        outcome = {
            "ok": False,
            "error": {"code": code or "bench_failed", "message": f"{type(exc).__name__}: {text}"},
        }
    result_path.write_text(json.dumps(outcome), "utf-8")
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
