"""A real agent fetches real .tflite models in chunks, stores them by sha256 and benchmarks them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from shared.messages import BenchmarkCmd
from shared.results import BenchmarkResult, from_data
from tests.agents import AgentProcess
from tests.device_agent.minihost import MiniHost, result_of

FAST = dict(warmup_runs=1, warmup_s=0.0, runs=40, min_s=0.0, timeout_s=60.0)


def host_accuracy(model_path: Path, eval_path: Path) -> float:
    """Top-1 accuracy computed here with ai_edge_litert, feeding samples as the agent should."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(model_path))
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    data = np.load(eval_path)
    correct = 0
    for sample, label in zip(data["x"], data["y"], strict=True):
        x = sample.reshape(inp["shape"])
        scale, zero_point = inp["quantization"]
        if scale:
            x = np.clip(np.round(x / scale + zero_point), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], x)
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(out["index"]).reshape(-1)) == label)
    return correct / len(data["y"])


@pytest.mark.parametrize(
    "model_file,precision", [("float.tflite", "fp32"), ("int8.tflite", "int8")]
)
def test_tflite_model_is_fetched_in_chunks_stored_by_sha_and_benchmarked_with_host_equal_accuracy(
    model_file: str,
    precision: str,
    model_dir: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    data_dir: Path,
) -> None:
    start_agent()
    model_path = model_dir / model_file
    model = minihost.offer(model_path, "tflite", precision)
    eval_data = minihost.offer(model_dir / "eval.npz", "npz", "data")
    chunk_size = 1024
    assert model.size_bytes > 2 * chunk_size  # really several chunks

    cmd_id = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="job-1", model=model, eval_data=eval_data, chunk_size=chunk_size, **FAST
        ),
    )
    result = from_data(result_of(minihost.wait_final(cmd_id, 90)), BenchmarkResult)

    stages = [r.data["stage"] for r in minihost.responses_to(cmd_id) if r.status == "progress"]
    assert stages == ["accepted", "fetching", "running"]
    assert result.job_id == "job-1" and result.model_sha256 == model.sha256
    assert result.backend == "tflite" and result.runtime.startswith("ai_edge_litert")
    assert result.size_bytes == model.size_bytes
    assert result.load_ms > 0 and result.peak_rss_mb > 10
    assert result.runs >= 5 and result.warmup_runs >= 1
    lat = result.latency_ms
    assert 0 < lat.min <= lat.p50 <= lat.p90 <= lat.p95 <= lat.p99 <= lat.max
    _check_fidelity(result)
    assert result.metric == "accuracy" and result.eval_samples == 40
    assert result.accuracy == pytest.approx(
        host_accuracy(model_path, model_dir / "eval.npz"), abs=1e-9
    )
    assert 0.0 < result.accuracy < 1.0
    assert "before" in result.board and "after" in result.board

    model_transfer = result.transfers[0]
    assert not model_transfer.already_stored
    assert model_transfer.chunks_total == -(-model.size_bytes // chunk_size)
    assert model_transfer.chunks_written == model_transfer.chunks_total
    stored = data_dir / "store" / f"{model.sha256}.tflite"
    assert stored.read_bytes() == model_path.read_bytes()
    assert sorted(minihost.requested_indices(model.sha256)) == list(
        range(model_transfer.chunks_total)
    )
    assert not list((data_dir / "partial").iterdir())

    # The same artifact again comes from the store: no chunk is asked for.
    requests_before = len(minihost.chunk_requests)
    again = minihost.send(device_id, "benchmark", BenchmarkCmd(job_id="job-2", model=model, **FAST))
    second = from_data(result_of(minihost.wait_final(again, 60)), BenchmarkResult)
    assert second.transfers[0].already_stored
    assert len(minihost.chunk_requests) == requests_before


def test_onnx_model_is_benchmarked_with_onnxruntime_and_agrees_with_reference_outputs(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
) -> None:
    import onnxruntime as ort

    start_agent(["--threads", "1"])
    model_path = model_dir / "float.onnx"
    x = np.load(model_dir / "eval.npz")["x"]
    session = ort.InferenceSession(str(model_path))
    name = session.get_inputs()[0].name
    ref = np.concatenate([session.run(None, {name: s[None]})[0] for s in x])
    # Reference outputs without labels: the metric is top-1 agreement; corrupt a quarter of them.
    ref[::4] = np.roll(ref[::4], 1, axis=1)
    changed = int(np.sum(np.argmax(ref[::4], 1) != np.argmax(np.roll(ref[::4], -1, axis=1), 1)))
    eval_path = tmp_path / "ref.npz"
    np.savez(eval_path, x=x, ref=ref)

    cmd = minihost.send(
        device_id,
        "benchmark",
        BenchmarkCmd(
            job_id="onnx",
            model=minihost.offer(model_path, "onnx"),
            eval_data=minihost.offer(eval_path, "npz", "data"),
            **FAST,
        ),
    )
    result = from_data(result_of(minihost.wait_final(cmd, 60)), BenchmarkResult)
    assert (
        result.backend == "onnx"
        and result.runtime.startswith("onnxruntime")
        and result.threads == 1
    )
    _check_fidelity(result)
    assert result.metric == "agreement" and result.accuracy is None
    assert result.metric_value == pytest.approx(1 - changed / len(x))


def _check_fidelity(result: BenchmarkResult) -> None:
    """The import is timed apart from the load; invoke()-only latency sits beside end-to-end,
    both with their spread."""
    assert result.import_ms is not None and result.import_ms >= 0 and result.load_ms > 0
    assert result.invoke_ms is not None and result.invoke_ms.min > 0
    assert result.invoke_ms.p50 <= result.latency_ms.p50 * 1.5  # bare invoke does less work
    for stats in (result.latency_ms, result.invoke_ms):
        assert stats.cv is not None and stats.cv >= 0
        assert stats.p50_ci is not None and stats.p50_ci[0] <= stats.p50 <= stats.p50_ci[1]
        assert stats.p90_ci is not None and stats.p90_ci[0] <= stats.p90 <= stats.p90_ci[1]
