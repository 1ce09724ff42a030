"""The local inference endpoint: a real agent serving its active model over a Unix socket to the
numpy-only client, switching models on deploy without a failed request, reporting in telemetry."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import psutil
import pytest

from device_agent.serve.client import InferenceClient, InferenceError
from shared.broker_url import parse_broker_url
from shared.errors import ValidationError
from shared.manifest import ArtifactManifest
from shared.messages import DeployCmd, Telemetry, decode
from shared.results import DeployResult, from_data
from shared.topics import Topics
from tests.agents import AgentProcess, wait_serving
from tests.device_agent.conftest import INPUT_SHAPE
from tests.device_agent.minihost import MiniHost

SAMPLES = 8
PER_MODEL = 40  # answers wanted from each model


class TelemetryLog:
    """Every telemetry message one device publishes, decoded."""

    def __init__(self, broker_url: str, base_topic: str, device_id: str) -> None:
        self.items: list[Telemetry] = []
        self._cond = threading.Condition()
        address = parse_broker_url(broker_url)
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"tele-{uuid.uuid4().hex[:8]}"
        )
        self.client.on_message = self._on_message
        self.client.connect(address.host, address.port)
        self.client.subscribe(Topics(base_topic).telemetry(device_id), 1)
        self.client.loop_start()

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            body = decode(msg.payload).body
        except ValidationError:
            return
        if isinstance(body, Telemetry):
            with self._cond:
                self.items.append(body)
                self._cond.notify_all()

    def wait_for(self, predicate: Callable[[Telemetry], bool], timeout: float) -> Telemetry:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for item in reversed(self.items):
                    if predicate(item):
                        return item
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no such telemetry; last: {self.items[-1:]}")
                self._cond.wait(min(remaining, 0.5))

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def telemetry(shared_broker_url: str, base_topic: str, device_id: str) -> Iterator[TelemetryLog]:
    log = TelemetryLog(shared_broker_url, base_topic, device_id)
    yield log
    log.stop()


def _reference(path: Path, inputs: np.ndarray) -> list[np.ndarray]:
    """The model's float outputs through ai-edge-litert in this process, quantizing by hand."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    results = []
    for sample in inputs:
        feed = sample.reshape(inp["shape"])
        scale, zero = inp["quantization"]
        if scale:
            feed = np.clip(np.round(feed / scale + zero), -128, 127).astype(inp["dtype"])
        interpreter.set_tensor(inp["index"], feed)
        interpreter.invoke()
        value = interpreter.get_tensor(out["index"])
        scale, zero = out["quantization"]
        results.append((value.astype(np.float32) - zero) * scale if scale else value)
    return results


def _deploy(host: MiniHost, device_id: str, model: ArtifactManifest, deploy_id: str) -> None:
    cmd = host.send(
        device_id,
        "deploy",
        DeployCmd(deploy_id=deploy_id, model=model, health_runs=3, timeout_s=60.0),
    )
    response = host.wait_final(cmd, 90)
    assert response.data is not None, response
    assert from_data(response.data, DeployResult).outcome == "committed", response


def test_endpoint_answers_a_stream_of_requests_while_a_deploy_switches_the_model_with_no_failure(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
    telemetry: TelemetryLog,
) -> None:
    socket_path = tmp_path / "agent.sock"
    start_agent(["--serve", f"unix:{socket_path}", "--telemetry-interval", "1"])
    inputs = np.random.default_rng(3).standard_normal((SAMPLES, *INPUT_SHAPE[1:]), np.float32)
    client = InferenceClient(f"unix:{socket_path}")

    with pytest.raises(InferenceError) as caught:
        client.infer(inputs[0])
    assert caught.value.code == "no_active_model"

    first = minihost.offer(model_dir / "float.tflite", "tflite")
    second = minihost.offer(model_dir / "int8.tflite", "tflite", "int8")
    _deploy(minihost, device_id, first, "serve-1")
    info = wait_serving(client, first.sha256)
    assert info["inputs"][0]["shape"] == list(INPUT_SHAPE) and "ai_edge_litert" in info["runtime"]
    with pytest.raises(InferenceError) as caught:
        client.infer(np.zeros((3, 3), np.float32))
    assert caught.value.code == "bad_input" and "takes shape [1, 1, 8, 8]" in str(caught.value)

    reference = {
        first.sha256: _reference(model_dir / "float.tflite", inputs),
        second.sha256: _reference(model_dir / "int8.tflite", inputs),
    }
    answers: list[tuple[str | None, int, np.ndarray]] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def stream() -> None:
        i = 0
        while not stop.is_set():
            try:
                (out,) = client.infer(inputs[i % SAMPLES])
                answers.append((client.last_model_sha256, i % SAMPLES, out))
            except Exception as exc:  # noqa: BLE001 -- every failure is counted and reported
                failures.append(exc)
            i += 1

    def answered_by(sha256: str) -> int:
        return sum(1 for sha, _, _ in list(answers) if sha == sha256)

    def wait_answers(sha256: str) -> None:
        deadline = time.monotonic() + 90
        while answered_by(sha256) < PER_MODEL and not failures:
            assert time.monotonic() < deadline, f"{len(answers)} answers, {failures}"
            time.sleep(0.05)

    thread = threading.Thread(target=stream)
    thread.start()
    try:
        wait_answers(first.sha256)
        _deploy(minihost, device_id, second, "serve-2")  # the stream goes on meanwhile
        wait_answers(second.sha256)
    finally:
        stop.set()
        thread.join(30)

    assert failures == [] and client.reconnects == 0
    models = [sha for sha, _, _ in answers]
    assert set(models) == {first.sha256, second.sha256}
    switched_at = models.index(second.sha256)
    assert set(models[switched_at:]) == {second.sha256}  # one switch, never back and forth
    for sha, sample, out in answers:
        tolerance = 1e-5 if sha == first.sha256 else 0.05  # int8: one quantization step
        np.testing.assert_allclose(out, reference[sha][sample], rtol=1e-4, atol=tolerance)
    print(
        f"\n{len(answers)} requests answered during the switch, 0 failed "
        f"({switched_at} by {first.sha256[:12]}, {len(answers) - switched_at} by "
        f"{second.sha256[:12]})"
    )

    sent = len(answers) + 2  # and the two refused requests above
    seen = telemetry.wait_for(
        lambda t: t.serving is not None and t.serving.requests_total == sent, 30
    )
    assert seen.serving is not None and seen.serving.errors_total == 2
    assert seen.serving.model_sha256 == second.sha256
    with_latency = telemetry.wait_for(
        lambda t: t.serving is not None and t.serving.latency_ms is not None, 5
    )
    serving = with_latency.serving
    assert serving is not None and serving.latency_ms is not None
    assert 0 < serving.latency_ms.p50 <= serving.latency_ms.p99 <= serving.latency_ms.max
    print(f"telemetry: {serving}")
    client.close()


def test_killed_inference_worker_is_restarted_on_the_same_socket_with_the_active_model(
    model_dir: Path,
    tmp_path: Path,
    start_agent: Callable[..., AgentProcess],
    minihost: MiniHost,
    device_id: str,
) -> None:
    socket_path = tmp_path / "agent.sock"
    agent = start_agent(["--serve", f"unix:{socket_path}"])
    model = minihost.offer(model_dir / "float.tflite", "tflite")
    _deploy(minihost, device_id, model, "serve-k")
    client = InferenceClient(f"unix:{socket_path}")
    wait_serving(client, model.sha256)
    client.close()
    assert agent.proc is not None
    (worker,) = [
        p
        for p in psutil.Process(agent.proc.pid).children()
        if "device_agent.serve.worker" in " ".join(p.cmdline())
    ]
    worker.kill()
    worker.wait(10)
    # A new connection waits in the socket's backlog until the new worker has loaded the model.
    fresh = InferenceClient(f"unix:{socket_path}", timeout=60)
    (out,) = fresh.infer(np.zeros(INPUT_SHAPE, np.float32))
    assert fresh.last_model_sha256 == model.sha256 and out.shape == (1, 10)
    assert "the inference worker exited" in agent.log()
    fresh.close()
