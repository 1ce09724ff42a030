"""Does the agent time what the runtime does? Its benchmark against a bare ``invoke()`` loop on the
same .tflite file, side by side in one run.

    python -m bench.runtime_fidelity [--quick] [--rounds 3] [--out bench/results/runtime_fidelity.json]

For MobileNetV2 at 128 px and for a tiny model of a few µs per run, each round runs the agent's own
benchmark worker (``device_agent.bench.runner.run_worker``, the code an agent runs for a job, in a
fresh process) and then a bare script in a fresh process that imports the runtime, loads the file
and times a loop of ``invoke()`` alone and a loop of set inputs / invoke / read outputs, all on one
thread. The figures are medians over the rounds:

- agent invoke()-only p50 over the bare ``invoke()`` loop's p50, and agent end-to-end p50 (set
  inputs, invoke, read outputs) over the bare end-to-end loop's (goal <= 1.05 each);
- agent ``load_ms`` over the bare load (goal <= 1.25: the import of the runtime is not load time;
  the agent reports it apart as ``import_ms``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.goals import GoalRow

DEFAULT_OUT = Path("bench/results/runtime_fidelity.json")
LATENCY_GOAL = 1.05
LOAD_GOAL = 1.25

BARE = r"""
import json, sys, time
t0 = time.perf_counter()
try:
    from ai_edge_litert.interpreter import Interpreter
except ImportError:
    from tflite_runtime.interpreter import Interpreter
import numpy as np
t1 = time.perf_counter()
interpreter = Interpreter(model_path=sys.argv[1], num_threads=1)
interpreter.allocate_tensors()
t2 = time.perf_counter()
inputs = interpreter.get_input_details()
outputs = interpreter.get_output_details()
feeds = [np.zeros(d["shape"], dtype=d["dtype"]) for d in inputs]
runs = int(sys.argv[2])
def end_to_end():
    for d, x in zip(inputs, feeds):
        interpreter.set_tensor(d["index"], x)
    interpreter.invoke()
    return [interpreter.get_tensor(d["index"]) for d in outputs]
def timed(fn):
    for _ in range(max(runs // 10, 1)):
        fn()
    samples = []
    for _ in range(runs):
        s = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - s) * 1000.0)
    samples.sort()
    return samples[len(samples) // 2]
e2e = timed(end_to_end)
invoke = timed(interpreter.invoke)
print(json.dumps({"import_ms": (t1 - t0) * 1000.0, "load_ms": (t2 - t1) * 1000.0,
                  "p50_ms": e2e, "invoke_p50_ms": invoke}))
"""


def _models(workdir: Path) -> dict[str, Path]:
    """MobileNetV2 at 128 px (fp32) and a tiny two-layer MLP, exported to TFLite."""
    import litert_torch
    import torch

    from host.export import ExportConfig, export
    from host.models import load_model

    bundle = load_model("builtin:mobilenetv2", input_shape=(3, 128, 128))
    mobilenet = export(bundle, None, ExportConfig(precision="fp32"), workdir / "mobilenetv2")
    torch.manual_seed(0)
    tiny = torch.nn.Sequential(torch.nn.Linear(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    tiny_path = workdir / "tiny.tflite"
    litert_torch.convert(tiny.eval(), (torch.zeros(1, 16),)).export(str(tiny_path))
    return {"mobilenetv2_128": Path(mobilenet.path), "tiny_mlp": tiny_path}


def _agent_round(path: Path, runs: int, workdir: Path) -> dict[str, float]:
    from device_agent.bench.runner import WorkerLimits, run_worker

    job = {
        "job_id": "fidelity", "model_path": str(path), "model_format": "tflite",
        "model_sha256": "0" * 64, "eval_path": None, "threads": 1,
        "warmup_runs": max(runs // 10, 1), "warmup_s": 0.0, "runs": runs, "min_s": 0.0,
    }  # fmt: skip
    result = run_worker(job, workdir, timeout_s=600.0, limits=WorkerLimits())
    return {
        "p50_ms": result["latency_ms"]["p50"],
        "invoke_p50_ms": result["invoke_ms"]["p50"],
        "load_ms": result["load_ms"],
        "import_ms": result["import_ms"],
        "cv": result["latency_ms"]["cv"],
    }


def _bare_round(path: Path, runs: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, "-c", BARE, str(path), str(runs)],
        capture_output=True, text=True, check=True, timeout=600,
    )  # fmt: skip
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(rounds: int, quick: bool) -> dict[str, Any]:
    runs = {"mobilenetv2_128": 100 if quick else 400, "tiny_mlp": 2000 if quick else 20000}
    out: dict[str, Any] = {"rounds": rounds, "quick": quick, "models": {}}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name, path in _models(work).items():
            agent, bare = [], []
            for index in range(rounds):
                agent.append(_agent_round(path, runs[name], work / f"{name}-{index}"))
                bare.append(_bare_round(path, runs[name]))

            def med(rows: list[dict[str, float]], key: str) -> float:
                return statistics.median(r[key] for r in rows)

            out["models"][name] = {
                "runs": runs[name],
                "agent": agent,
                "bare": bare,
                "agent_p50_ms": med(agent, "p50_ms"),
                "agent_invoke_p50_ms": med(agent, "invoke_p50_ms"),
                "bare_p50_ms": med(bare, "p50_ms"),
                "bare_invoke_p50_ms": med(bare, "invoke_p50_ms"),
                "agent_load_ms": med(agent, "load_ms"),
                "agent_import_ms": med(agent, "import_ms"),
                "bare_load_ms": med(bare, "load_ms"),
                "bare_import_ms": med(bare, "import_ms"),
            }
    return out


def table(data: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for name, m in data["models"].items():
        for label, ours, key, goal in (
            ("agent p50 (end to end)", m["agent_p50_ms"], "bare_p50_ms", LATENCY_GOAL),
            (
                "agent invoke()-only p50",
                m["agent_invoke_p50_ms"],
                "bare_invoke_p50_ms",
                LATENCY_GOAL,
            ),
            ("agent load_ms", m["agent_load_ms"], "bare_load_ms", LOAD_GOAL),
        ):
            ratio = ours / m[key] if m[key] > 0 else float("inf")
            rows.append({
                "model": name, "measure": label, "edgetailor_ms": ours, "bare_ms": m[key],
                "ratio": ratio, "goal": f"<= {goal}", "pass": ratio <= goal,
            })  # fmt: skip
    return rows


def goal_rows(report: dict[str, Any]) -> list[GoalRow]:
    return [
        GoalRow(
            "runtime_fidelity",
            f"{r['measure']}, {r['model']}",
            f"{r['edgetailor_ms']:.4f} ms",
            r["goal"],
            r["pass"],
            baseline=f"{r['bare_ms']:.4f} ms (bare loop)",
            ratio=r["ratio"],
        )
        for r in report["table"]
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 round, fewer runs")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per model (default: 3)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    data = measure(1 if args.quick else args.rounds, args.quick)
    rows = table(data)
    data["table"] = rows
    data["machine"] = {"python": platform.python_version(), "machine": platform.machine()}
    print(
        f"{'model':<16} {'measure':<26} {'ours ms':>10} {'bare ms':>10} {'ratio':>7} goal    result"
    )
    for r in rows:
        print(
            f"{r['model']:<16} {r['measure']:<26} {r['edgetailor_ms']:>10.5f} {r['bare_ms']:>10.5f} "
            f"{r['ratio']:>7.3f} {r['goal']:<7} {'pass' if r['pass'] else 'MISS'}"
        )
    for name, m in data["models"].items():
        print(f"{name}: import of the runtime {m['agent_import_ms']:.1f} ms in the agent's worker, "
              f"{m['bare_import_ms']:.1f} ms bare (reported apart as import_ms)")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(data, indent=2), "utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
