"""The inference worker: a long-lived process that runs the active model for local applications.

Run by :mod:`device_agent.serve.supervisor` as ``python -m device_agent.serve.worker LISTEN_FD
REPLY_FD``. The agent owns the listening socket (so a restarted worker keeps the address and queued
connections wait in its backlog) and sends JSON lines on stdin: ``load`` (a model to serve) and
``stats``; answers go to REPLY_FD. When stdin closes (the agent stopped or died) the worker exits.

HTTP/1.1 with keep-alive, bodies in numpy's own formats, so a client needs numpy and the standard
library only:

- ``POST /v1/infer``: body a ``.npz`` (``numpy.savez(f, x0, x1, ...)``; or arrays named like the
  model's inputs) or a ``.npy`` for a one-input model. Answer: a ``.npz`` with the outputs as
  ``arr_0``, ``arr_1``, ... in float32, dequantized from int8 models (``?raw=1`` returns the
  model's own dtypes); header ``X-Model-Sha256`` names the model that answered. Float inputs of an
  int8 model are quantized with the input tensor's scale and zero-point. Errors are JSON
  ``{"error": {"code", "message"}}`` with status 400 (bad input), 413, 503 (no model yet) or 500.
- ``GET /v1/model``: JSON of the model being served (sha256, runtime, threads, tensors).
- ``GET /healthz``: 200 when a model is loaded, else 503.

A deploy loads the new model beside the old one, runs it once, and swaps the two between two
requests under the lock every inference holds (interpreters are not thread-safe), so no request
fails or waits for a load; a model that fails to load leaves the old one serving.
"""

from __future__ import annotations

import http.server
import io
import json
import logging
import os
import random
import socket
import socketserver
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from device_agent.backends import Backend, LoadedModel, TensorInfo, discover, shaped_for
from device_agent.bench.worker import _latency_stats
from shared.errors import EdgeTailorError

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024 * 1024
WINDOW_SAMPLES = 20_000  # latencies kept per telemetry interval (a uniform sample beyond that)
IDLE_CONNECTION_S = 300.0


class ServeError(EdgeTailorError):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@dataclass
class Served:
    sha256: str
    format: str
    backend: str
    threads: int | None
    model: LoadedModel
    load_ms: float
    loaded_at: float

    def describe(self) -> dict[str, Any]:
        def tensors(infos: list[TensorInfo]) -> list[dict[str, Any]]:
            return [
                {"name": t.name, "shape": list(t.shape), "dtype": t.dtype, "scale": t.scale,
                 "zero_point": t.zero_point}
                for t in infos
            ]  # fmt: skip

        return {
            "sha256": self.sha256,
            "format": self.format,
            "backend": self.backend,
            "runtime": self.model.runtime,
            "threads": self.threads,
            "load_ms": round(self.load_ms, 3),
            "loaded_at": self.loaded_at,
            "inputs": tensors(self.model.inputs),
            "outputs": tensors(self.model.outputs),
        }


def _to_input(index: int, array: Any, spec: TensorInfo) -> Any:
    array = np.asarray(array)
    size = int(np.prod(spec.shape)) if spec.shape else 1
    if array.size != size:
        raise ServeError(
            400,
            "bad_input",
            f"input {index} ({spec.name!r}) takes shape {list(spec.shape)} ({size} values), "
            f"got an array of shape {list(array.shape)}",
        )
    return shaped_for(array, spec)


def _to_output(array: Any, spec: TensorInfo, raw: bool) -> Any:
    array = np.asarray(array)
    if raw:
        return array
    if spec.scale and np.issubdtype(array.dtype, np.integer):
        return (array.astype(np.float32) - spec.zero_point) * np.float32(spec.scale)
    return array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array


def decode_inputs(body: bytes) -> list[Any] | dict[str, Any]:
    """A .npy body is one input; a .npz holds ``arr_0, arr_1...`` (positional) or named inputs."""
    try:
        if body[:6] == b"\x93NUMPY":
            return [np.load(io.BytesIO(body), allow_pickle=False)]
        if body[:2] == b"PK":
            with np.load(io.BytesIO(body), allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            positional = [f"arr_{i}" for i in range(len(arrays))]
            if sorted(arrays) == sorted(positional):
                return [arrays[name] for name in positional]
            return arrays
    except (ValueError, OSError, EOFError) as exc:
        raise ServeError(400, "bad_input", f"the body is not a readable .npy/.npz: {exc}") from exc
    raise ServeError(
        400,
        "bad_input",
        "the body must be a .npz (numpy.savez) or .npy (numpy.save) file; pickled objects are refused",
    )


def encode_outputs(outputs: list[Any]) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, *outputs)
    return buffer.getvalue()


class ServingState:
    """The model being served and the request statistics of the current telemetry interval."""

    def __init__(self) -> None:
        self.run_lock = threading.Lock()  # one inference at a time; the swap takes it too
        self.served: Served | None = None
        self._stats_lock = threading.Lock()
        self._window_start = time.monotonic()
        self._requests = self._errors = 0
        self._latencies: list[float] = []
        self._rng = random.Random(0)

    def infer(self, inputs: list[Any] | dict[str, Any], raw: bool) -> tuple[list[Any], Served]:
        with self.run_lock:
            served = self.served
            if served is None:
                raise ServeError(
                    503,
                    "no_active_model",
                    "this device has no active model yet; deploy one with `edgetailor deploy`",
                )
            specs = served.model.inputs
            if isinstance(inputs, dict):
                names = [spec.name for spec in specs]
                if sorted(inputs) != sorted(names):
                    raise ServeError(
                        400,
                        "bad_input",
                        f"the model's inputs are {names}; the request names {sorted(inputs)}",
                    )
                ordered = [inputs[name] for name in names]
            else:
                ordered = inputs
            if len(ordered) != len(specs):
                raise ServeError(
                    400,
                    "bad_input",
                    f"the model takes {len(specs)} input(s), the request has {len(ordered)}",
                )
            feeds = [
                _to_input(i, a, s) for i, (a, s) in enumerate(zip(ordered, specs, strict=True))
            ]
            outputs = served.model.run(feeds)
        outs = served.model.outputs
        return [_to_output(o, s, raw) for o, s in zip(outputs, outs, strict=False)], served

    def record(self, ok: bool, latency_ms: float) -> None:
        with self._stats_lock:
            self._requests += 1
            if not ok:
                self._errors += 1
                return
            answered = self._requests - self._errors
            if len(self._latencies) < WINDOW_SAMPLES:
                self._latencies.append(latency_ms)
            else:  # reservoir sampling keeps a uniform sample of the whole interval
                slot = self._rng.randrange(answered)
                if slot < WINDOW_SAMPLES:
                    self._latencies[slot] = latency_ms

    def take_stats(self) -> dict[str, Any]:
        with self._stats_lock:
            now = time.monotonic()
            stats: dict[str, Any] = {
                "interval_s": round(now - self._window_start, 3),
                "requests": self._requests,
                "errors": self._errors,
                "latency_ms": None,
            }
            if self._latencies:
                full = _latency_stats(self._latencies)
                stats["latency_ms"] = {k: full[k] for k in ("mean", "p50", "p90", "p99", "max")}
            self._window_start, self._requests, self._errors = now, 0, 0
            self._latencies = []
        served = self.served
        stats["model_sha256"] = served.sha256 if served else None
        stats["runtime"] = served.model.runtime if served else None
        return stats


STATE = ServingState()
_LOAD_LOCK = threading.Lock()  # loads one after another, so the last one asked for wins


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "edgetailor-serve"
    timeout = IDLE_CONNECTION_S

    def setup(self) -> None:
        super().setup()
        if self.connection.family in (socket.AF_INET, socket.AF_INET6):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def address_string(self) -> str:
        return str(self.client_address[0]) if self.client_address else "local"

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s %s", self.address_string(), format % args)

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        # Head and body in one write: two small writes on TCP meet Nagle and delayed ACKs (40 ms).
        lines = [
            f"HTTP/1.1 {status} {self.responses.get(status, ('',))[0]}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            *(f"{k}: {v}" for k, v in (headers or {}).items()),
        ]
        if self.close_connection:
            lines.append("Connection: close")
        self.wfile.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)

    def _send_json(self, status: int, data: dict[str, Any]) -> None:
        self._send(status, json.dumps(data).encode(), "application/json")

    def _error(self, status: int, code: str, message: str) -> None:
        self._send_json(status, {"error": {"code": code, "message": message}})

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        served = STATE.served
        if path == "/healthz":
            if served is None:
                self._send(503, b"no active model\n", "text/plain")
            else:
                self._send(200, b"ok\n", "text/plain")
        elif path == "/v1/model":
            if served is None:
                self._error(503, "no_active_model", "this device has no active model yet")
            else:
                self._send_json(200, served.describe())
        else:
            self._error(404, "not_found", f"no such endpoint {path}; POST /v1/infer, GET /v1/model")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        length_text = self.headers.get("Content-Length")
        if length_text is None or not length_text.isdigit():
            self.close_connection = True
            self._error(411, "length_required", "send the body with a Content-Length header")
            return
        length = int(length_text)
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            self._error(413, "too_large", f"a request body may have at most {MAX_BODY_BYTES} bytes")
            return
        body = self.rfile.read(length)
        if parts.path != "/v1/infer":
            self._error(404, "not_found", f"no such endpoint {parts.path}; POST /v1/infer")
            return
        raw = parse_qs(parts.query).get("raw", ["0"])[0] in ("1", "true", "yes")
        started = time.perf_counter()
        try:
            outputs, served = STATE.infer(decode_inputs(body), raw)
            payload = encode_outputs(outputs)
        except ServeError as exc:
            STATE.record(False, 0.0)
            self._error(exc.status, exc.code, exc.message)
            return
        except Exception as exc:  # a runtime failure is this request's error only
            STATE.record(False, 0.0)
            logger.exception("inference failed")
            self._error(500, "inference_failed", f"{type(exc).__name__}: {exc}"[:2000])
            return
        latency_ms = (time.perf_counter() - started) * 1000.0
        STATE.record(True, latency_ms)
        self._send(
            200,
            payload,
            "application/x-npz",
            {"X-Model-Sha256": served.sha256, "X-Latency-Ms": f"{latency_ms:.3f}"},
        )


class _Server(socketserver.ThreadingMixIn, socketserver.TCPServer):
    """An HTTP server on a socket the agent already bound (TCP or Unix)."""

    daemon_threads = True
    block_on_close = False

    def __init__(self, sock: socket.socket) -> None:
        socketserver.BaseServer.__init__(self, sock.getsockname(), Handler)
        self.socket = sock


def _backend_for(fmt: str, runtime: str | None) -> Backend:
    backends = discover()
    if runtime:
        for backend in backends.values():
            if backend.name == runtime and fmt in backend.formats:
                return backend
        logger.warning("runtime %r is not available for %s here; using the default", runtime, fmt)
    if fmt not in backends:
        raise ServeError(
            503, "unsupported_format", f"this device has no runtime for {fmt!r} models"
        )
    return backends.get(fmt)


def _synthetic(specs: list[TensorInfo]) -> list[Any]:
    return [np.zeros(spec.shape, dtype=np.dtype(spec.dtype)) for spec in specs]


def load(request: dict[str, Any]) -> dict[str, Any]:
    """Load, run once, then swap in: the old model serves until the new one is proven to run."""
    with _LOAD_LOCK:
        return _load(request)


def _load(request: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    backend = _backend_for(request["format"], request.get("runtime"))
    model = backend.load(request["path"], request.get("threads"))
    model.run(_synthetic(model.inputs))
    served = Served(
        sha256=request["sha256"],
        format=request["format"],
        backend=backend.name,
        threads=request.get("threads"),
        model=model,
        load_ms=(time.perf_counter() - started) * 1000.0,
        loaded_at=time.time(),
    )
    with STATE.run_lock:
        STATE.served = served
    return {"sha256": served.sha256, "runtime": model.runtime, "load_ms": round(served.load_ms, 3)}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m device_agent.serve.worker LISTEN_FD REPLY_FD", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s serve-worker: %(message)s")
    server = _Server(socket.socket(fileno=int(args[0])))
    replies = os.fdopen(int(args[1]), "w", buffering=1, encoding="utf-8")
    reply_lock = threading.Lock()

    def reply(message: dict[str, Any]) -> None:
        with reply_lock:
            try:
                replies.write(json.dumps(message) + "\n")
            except (OSError, ValueError):
                pass  # the agent is gone; stdin closing ends this process

    def handle_load(request: dict[str, Any]) -> None:
        try:
            reply({"id": request.get("id"), "ok": True, **load(request["model"])})
        except Exception as exc:  # noqa: BLE001 -- reported to the agent; the old model stays
            reply({"id": request.get("id"), "ok": False, "error": f"{type(exc).__name__}: {exc}"})

    # The first line says what to serve; it is loaded before the first request is accepted, so
    # after a restart, clients waiting in the backlog are answered by the model, not with 503.
    first = sys.stdin.readline()
    if not first:
        return 0
    try:
        request = json.loads(first)
    except ValueError:
        request = {}
    if request.get("op") == "load":
        handle_load(request)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    reply({"event": "ready", "pid": os.getpid()})
    for line in sys.stdin:
        try:
            request = json.loads(line)
        except ValueError:
            continue
        op = request.get("op")
        if op == "load":
            threading.Thread(target=handle_load, args=(request,), daemon=True).start()
        elif op == "stats":
            reply({"id": request.get("id"), "ok": True, **STATE.take_stats()})
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
