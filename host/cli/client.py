"""The CLI as a client of ``edgetailor serve``: with ``--server URL`` the fleet commands go
through the REST API (token from ``--token`` or ``EDGETAILOR_TOKEN``) instead of the broker."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from host.errors import ConfigError, HostError


class ServerError(HostError):
    """The service refused the request or cannot be reached."""


class ApiClient:
    def __init__(self, server: str, token: str | None = None, timeout: float = 60.0) -> None:
        import httpx

        if not server.startswith(("http://", "https://")):
            raise ConfigError(f"--server {server!r}: give a URL such as http://127.0.0.1:8000")
        self.server = server.rstrip("/")
        self.token = token or os.environ.get("EDGETAILOR_TOKEN") or None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._http = httpx.Client(base_url=self.server, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kw: Any) -> Any:
        import httpx

        try:
            response = self._http.request(method, f"/api/v1{path}", **kw)
        except httpx.HTTPError as exc:
            raise ServerError(
                f"cannot reach the service at {self.server}: {exc}; is `edgetailor serve` "
                "running there?"
            ) from exc
        if response.status_code >= 400:
            try:
                error = response.json()["error"]
                text = error["message"]
            except (ValueError, KeyError, TypeError):
                text = response.text[:500]
            if response.status_code in (401, 403):
                text += " (pass --token or set EDGETAILOR_TOKEN)" if not self.token else ""
            raise ServerError(f"{self.server}: {response.status_code}: {text}")
        return response.json()

    def get(self, path: str, **kw: Any) -> Any:
        return self.request("GET", path, **kw)

    def post(self, path: str, **kw: Any) -> Any:
        return self.request("POST", path, **kw)

    def upload(self, path: Path) -> str:
        """Store a local file on the service; its sha256."""
        with open(path, "rb") as handle:  # streamed: the file is not read into memory
            doc = self.post("/artifacts", params={"filename": path.name}, content=handle)
        return str(doc["sha256"])

    def follow_deployment(self, rollout_id: str, grace_s: float, poll_s: float = 1.0) -> Any:
        """Poll until every device answered, or what is left waits on offline devices for
        ``grace_s`` (the service keeps driving those)."""
        waiting_since: float | None = None
        while True:
            doc = self.get(f"/deployments/{rollout_id}")
            if not doc["open"]:
                return doc
            left = [d for d in doc["devices"] if d["state"] in ("waiting", "pending", "sent")]
            online = {d["device_id"]: d["online"] for d in self.get("/devices")}
            if (
                doc["current_wave"] == len(doc["waves"])
                and left
                and not any(online.get(d["device_id"]) for d in left)
            ):
                waiting_since = waiting_since or time.monotonic()
                if time.monotonic() - waiting_since >= grace_s:
                    return doc
            else:
                waiting_since = None
            time.sleep(poll_s)
