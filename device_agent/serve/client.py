"""A client of the agent's local inference endpoint; needs numpy and the standard library only.

    from device_agent.serve.client import InferenceClient

    client = InferenceClient("unix:/run/edgetailor/agent.sock")   # or "127.0.0.1:8470"
    (logits,) = client.infer(image)            # numpy arrays in, numpy arrays out
    client.model()                             # {"sha256": ..., "runtime": ..., "inputs": [...]}

The file has no other dependency on edgetailor: copy it into an application that does not install
the package. One connection is kept open (HTTP/1.1 keep-alive); a connection the endpoint closed
while idle is opened again once, and ``reconnects`` counts how often that happened.
"""

from __future__ import annotations

import http.client
import io
import json
import socket
from typing import Any, Self

import numpy as np


class InferenceError(RuntimeError):
    """The endpoint refused or failed a request; ``code`` says why (e.g. "bad_input")."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"[{status} {code}] {message}")
        self.status, self.code = status, code


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.socket_path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.socket_path)


class InferenceClient:
    def __init__(self, address: str = "unix:/run/edgetailor/agent.sock", timeout: float = 30.0):
        if address.startswith("unix:"):
            self._connect = lambda: _UnixConnection(address[5:], timeout)
        else:
            host, _, port = address.rpartition(":")
            self._connect = lambda: http.client.HTTPConnection(host, int(port), timeout=timeout)
        self._conn: http.client.HTTPConnection | None = None
        self.reconnects = 0
        self.last_model_sha256: str | None = None  # the model that answered the last request

    def _request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        for attempt in (0, 1):
            fresh = self._conn is None
            if fresh:
                self._conn = self._connect()
            try:
                self._conn.request(method, path, body)
                response = self._conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.close()
                if fresh or attempt:  # only a reused idle connection is worth one more try
                    raise
                self.reconnects += 1
                continue
            self.last_model_sha256 = response.getheader("X-Model-Sha256")
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return response.status, data
        raise AssertionError("unreachable")

    def infer(self, *inputs: Any, raw: bool = False) -> list[np.ndarray]:
        """Run the active model on ``inputs`` (one array per model input); returns its outputs."""
        buffer = io.BytesIO()
        np.savez(buffer, *inputs)
        status, data = self._request("POST", "/v1/infer?raw=1" if raw else "/v1/infer",
                                     buffer.getvalue())  # fmt: skip
        if status != 200:
            raise _error(status, data)
        with np.load(io.BytesIO(data), allow_pickle=False) as outputs:
            return [outputs[f"arr_{i}"] for i in range(len(outputs.files))]

    def model(self) -> dict[str, Any]:
        status, data = self._request("GET", "/v1/model")
        if status != 200:
            raise _error(status, data)
        return json.loads(data)

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _error(status: int, data: bytes) -> InferenceError:
    try:
        error = json.loads(data)["error"]
        return InferenceError(status, str(error["code"]), str(error["message"]))
    except (ValueError, KeyError, TypeError):
        return InferenceError(status, "http_error", data[:500].decode("utf-8", "replace"))
