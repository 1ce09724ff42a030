"""The benchmark worker: a separate process that loads one model with its runtime and measures it.

Run as ``python -m device_agent.bench.worker JOB.json RESULT.json`` by device_agent.bench.runner,
under resource limits. It is the only process that imports numpy and a runtime, so a model that
crashes the runtime takes down this process, not the agent. It writes its result (or a typed error)
as JSON to RESULT.json; no pickle crosses the process boundary.

Measured: load time (construct + allocate), warm-up (at least ``warmup_runs`` and ``warmup_s``),
timed runs (at least ``runs`` and ``min_s``), latency statistics, peak RSS and RSS growth of this
process, and with eval data top-1 accuracy against labels ``y`` or top-1 agreement with reference
outputs ``ref``. Board state is recorded before loading and after the timed runs.

With ``"mode": "health"`` in the job it runs a deploy's health check instead (:func:`run_health`):
the model loads, every output on the eval inputs (or synthetic ones) is finite, the p90 latency of
``health_runs`` runs is within ``latency_budget_ms``, and the metric is at least ``min_metric``.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from device_agent.backends import LoadedModel, TensorInfo, discover
from device_agent.errors import JobError
from device_agent.telemetry import board_state
from shared.errors import EdgeTailorError

logger = logging.getLogger(__name__)

_MB = 1024 * 1024


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
    array = array.reshape(spec.shape)
    target = np.dtype(spec.dtype)
    if np.issubdtype(target, np.integer) and spec.scale and np.issubdtype(array.dtype, np.floating):
        info = np.iinfo(target)
        array = np.clip(np.round(array / spec.scale + spec.zero_point), info.min, info.max)
    return array.astype(target, copy=False)


def _to_float(output: Any, spec: TensorInfo) -> Any:
    import numpy as np

    array = np.asarray(output)
    if spec.scale and np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) - spec.zero_point) * spec.scale
    return array.astype(np.float32, copy=False)


def _load_eval(path: str) -> tuple[list[Any], Any, Any]:
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
    lengths = {len(a) for a in inputs} | ({len(labels)} if labels is not None else set())
    if ref is not None:
        lengths.add(len(ref))
    if len(lengths) != 1:
        raise JobError(
            "eval_data_invalid", f"eval arrays disagree on the sample count: {sorted(lengths)}"
        )
    return inputs, labels, ref


def _latency_stats(samples_ms: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.asarray(samples_ms, dtype=np.float64)
    pct = np.percentile(arr, [50, 90, 95, 99])
    return {
        "mean": round(float(arr.mean()), 4),
        "std": round(float(arr.std()), 4),
        "min": round(float(arr.min()), 4),
        "p50": round(float(pct[0]), 4),
        "p90": round(float(pct[1]), 4),
        "p95": round(float(pct[2]), 4),
        "p99": round(float(pct[3]), 4),
        "max": round(float(arr.max()), 4),
    }


def _synthetic_inputs(model: LoadedModel) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(0)
    feeds = []
    for spec in model.inputs:
        dtype = np.dtype(spec.dtype)
        if np.issubdtype(dtype, np.floating):
            feeds.append(rng.standard_normal(spec.shape).astype(dtype))
        elif dtype == np.bool_:
            feeds.append(np.ones(spec.shape, dtype=dtype))
        else:
            feeds.append(np.zeros(spec.shape, dtype=dtype))
    return feeds


def _evaluate(
    model: LoadedModel,
    path: str,
    limit: int | None,
    on_outputs: Callable[[list[Any]], None] | None = None,
) -> dict[str, Any]:
    import numpy as np

    inputs, labels, ref = _load_eval(path)
    if len(inputs) != len(model.inputs):
        raise JobError(
            "eval_data_mismatch",
            f"eval data has {len(inputs)} input arrays, the model has {len(model.inputs)} inputs",
        )
    count = len(inputs[0]) if limit is None else min(limit, len(inputs[0]))
    correct = agree = 0
    for i in range(count):
        feeds = [
            _to_model_input(arr[i], spec) for arr, spec in zip(inputs, model.inputs, strict=True)
        ]
        outputs = model.run(feeds)
        if on_outputs is not None:
            on_outputs(outputs)
        output = _to_float(outputs[0], model.outputs[0]).reshape(-1)
        predicted = int(np.argmax(output))
        if labels is not None:
            correct += int(predicted == int(np.asarray(labels[i]).reshape(-1)[0]))
        if ref is not None:
            agree += int(predicted == int(np.argmax(np.asarray(ref[i]).reshape(-1))))
    result: dict[str, Any] = {"eval_samples": count}
    if count == 0:
        return result
    if labels is not None:
        result["accuracy"] = correct / count
        result["metric"], result["metric_value"] = "accuracy", correct / count
    elif ref is not None:
        result["metric"], result["metric_value"] = "agreement", agree / count
    return result


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    backends = discover()
    backend = backends.get(job["model_format"])
    board_before = board_state()
    rss_before = _rss_mb()
    started = time.perf_counter()
    try:
        model = backend.load(job["model_path"], job.get("threads"))
    except EdgeTailorError:
        raise
    except Exception as exc:
        raise JobError(
            "model_load_failed", f"{backend.name} could not load the model: {exc}"
        ) from exc
    load_ms = (time.perf_counter() - started) * 1000.0

    metrics: dict[str, Any] = {"eval_samples": 0}
    if job.get("eval_path"):
        metrics = _evaluate(model, job["eval_path"], job.get("eval_limit"))
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
        "warmup_runs": warmup_runs,
        "runs": len(samples),
        "latency_ms": _latency_stats(samples),
        "peak_rss_mb": round(_peak_rss_mb(), 2),
        "rss_growth_mb": round(_rss_mb() - rss_before, 2),
        "board": board,
        **metrics,
    }


def run_health(job: dict[str, Any]) -> dict[str, Any]:
    """A deploy's health check of one staged model; returns a HealthReport as a dict."""
    import numpy as np

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

    nonfinite = {"outputs": 0, "runs": 0}

    def count_nonfinite(outputs: list[Any]) -> None:
        nonfinite["runs"] += 1
        bad = sum(
            int(np.count_nonzero(~np.isfinite(_to_float(out, spec))))
            for out, spec in zip(outputs, model.outputs, strict=False)
        )
        nonfinite["outputs"] += int(bad > 0)

    metrics: dict[str, Any] = {}
    if job.get("eval_path"):
        metrics = _evaluate(model, job["eval_path"], job.get("eval_limit"), count_nonfinite)
    feeds = _synthetic_inputs(model)
    count_nonfinite(model.run(feeds))  # also the warm-up run
    checks["finite_outputs"] = nonfinite["outputs"] == 0
    if not checks["finite_outputs"]:
        problems.append(
            f"{nonfinite['outputs']} of {nonfinite['runs']} runs produced NaN or infinite outputs"
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
        "detail": "; ".join(problems) or "all checks passed",
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
