"""Untrusted models that hang the runtime, allocate without bound, or crash it: the agent survives
each, reports each with its own error code, and runs the next job.

The models are hand-built ONNX graphs run by the real onnxruntime in the agent's worker: a Loop with
2**62 iterations (hang), and a Loop that doubles a tensor on every iteration (unbounded allocation,
stopped by the worker's RLIMIT_AS). No model file that reliably segfaults this onnxruntime or LiteRT
build was found (the known crashers in their trackers are fixed or load-time errors), so the crash
is a real SIGSEGV delivered to the worker process while it runs the hanging model.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from host.commands.bench import submit_benchmark, wait_benchmark
from host.errors import JobFailedError
from host.fleet import Fleet
from tests.e2e.conftest import AgentFactory, DigitsArtifacts

pytestmark = pytest.mark.slow

FAST = dict(runs=2, warmup_runs=1, warmup_s=0.0, min_s=0.0)


def _loop_model(path: Path, *, trip_count: int, doubling: bool) -> Path:
    import onnx
    from onnx import TensorProto as T
    from onnx import helper as h

    def info(name: str, dtype: int, shape: list[int] | None) -> onnx.ValueInfoProto:
        return h.make_tensor_value_info(name, dtype, shape)

    step = (
        h.make_node("Concat", ["v_in", "v_in"], ["v_out"], axis=0)
        if doubling
        else h.make_node("Add", ["v_in", "one"], ["v_out"])
    )
    body = h.make_graph(
        [h.make_node("Identity", ["cond_in"], ["cond_out"]), step], "body",
        [info("i", T.INT64, []), info("cond_in", T.BOOL, []), info("v_in", T.FLOAT, None)],
        [info("cond_out", T.BOOL, []), info("v_out", T.FLOAT, None)],
        [h.make_tensor("one", T.FLOAT, [1], [1.0])],
    )  # fmt: skip
    graph = h.make_graph(
        [
            h.make_node("Loop", ["trip", "cond", "x"], ["looped"], body=body),
            h.make_node("ReduceSum", ["looped"], ["total"], keepdims=1),
            h.make_node("Add", ["x", "total"], ["y"]),
        ],
        "hang" if not doubling else "grow",
        [info("x", T.FLOAT, [1, 4])],
        [info("y", T.FLOAT, [1, 4])],
        [
            h.make_tensor("trip", T.INT64, [], [trip_count]),
            h.make_tensor("cond", T.BOOL, [], [True]),
        ],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, path)
    return path


@pytest.fixture(scope="module")
def hostile_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("hostile")
    return {
        "hang": _loop_model(out / "hang.onnx", trip_count=2**62, doubling=False),
        "grow": _loop_model(out / "grow.onnx", trip_count=60, doubling=True),
    }


def _worker_of(agent_pid: int, timeout: float = 30.0) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(agent_pid).children(recursive=True):
            if "device_agent.bench.worker" in " ".join(child.cmdline()):
                return child
        time.sleep(0.05)
    raise TimeoutError("the benchmark worker never started")


def test_a_hanging_an_exploding_and_a_crashing_model_are_each_reported_and_the_agent_keeps_serving(
    shared_broker_url: str, base_topic: str, start_agent: AgentFactory,
    hostile_models: dict[str, Path], digits_model: DigitsArtifacts, tmp_path: Path,
) -> None:  # fmt: skip
    agent = start_agent("board-x", shared_broker_url, extra_args=["--worker-memory-mb", "1500"])
    assert agent.proc is not None
    with Fleet(shared_broker_url, base_topic, store=f"sqlite:///{tmp_path / 'host.db'}") as fleet:
        hang = submit_benchmark(fleet, "board-x", hostile_models["hang"], timeout_s=4, **FAST)
        with pytest.raises(JobFailedError) as hung:
            wait_benchmark(fleet, hang, 60)
        assert hung.value.code == "timeout", hung.value

        grow = submit_benchmark(fleet, "board-x", hostile_models["grow"], timeout_s=60, **FAST)
        with pytest.raises(JobFailedError) as exploded:
            wait_benchmark(fleet, grow, 90)
        assert exploded.value.code == "out_of_memory", exploded.value
        assert "allocate" in str(exploded.value)

        crash = submit_benchmark(fleet, "board-x", hostile_models["hang"], timeout_s=60, **FAST)
        worker = _worker_of(agent.proc.pid)
        time.sleep(0.5)  # let it load the model and enter the runtime
        worker.send_signal(signal.SIGSEGV)
        with pytest.raises(JobFailedError) as crashed:
            wait_benchmark(fleet, crash, 60)
        assert crashed.value.code == "worker_crashed", crashed.value
        assert "SIGSEGV" in str(crashed.value)

        assert agent.running
        assert psutil.Process(agent.proc.pid).children(recursive=True) == []
        good = submit_benchmark(fleet, "board-x", digits_model.tflite, timeout_s=60, **FAST)
        assert wait_benchmark(fleet, good, 60).runs >= 2
