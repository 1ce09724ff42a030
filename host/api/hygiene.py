"""What every answer of the service gets, whatever route it reaches: a Host header check, and the
headers a browser needs to keep a page of another origin away from it.

The Host check is what stops DNS rebinding: a page on ``evil.example`` that rebinds its name to
127.0.0.1 reaches the service with ``Host: evil.example``, which is not on the allow-list
(``ApiContext.allowed_hosts``: the bind address, the loopback names when bound to loopback, and
``serve --allow-host``), and gets a 400 before any route runs. The dashboard's pages carry a
content security policy that allows scripts, styles and connections to this origin only.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from starlette.types import ASGIApp, Message, Receive, Scope, Send

DASHBOARD_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
COMMON_HEADERS = (
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
)
DASHBOARD_HEADERS = (
    (b"content-security-policy", DASHBOARD_CSP.encode()),
    (b"x-frame-options", b"DENY"),
)


def host_name(header: str) -> str:
    """``Host`` header value -> the host name alone: ``[::1]:8000`` -> ``::1``, lower case."""
    value = header.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def allows_host(allowed: Iterable[str], header: str | None) -> bool:
    names = {a.strip().lower() for a in allowed}
    if "*" in names:
        return True
    return header is not None and host_name(header) in names


def is_dashboard(path: str) -> bool:
    return path == "/" or path.startswith("/dashboard/")


class Hygiene:
    """ASGI middleware: 400 for a Host header not on the allow-list, security headers on the rest.

    The allow-list is read from ``app.state.ctx.allowed_hosts`` at each request.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        host = next(
            (v.decode("latin-1") for k, v in scope.get("headers", []) if k == b"host"), None
        )
        allowed = scope["app"].state.ctx.allowed_hosts
        if not allows_host(allowed, host):
            await _refuse_host(send, host)
            return
        extra = COMMON_HEADERS + (DASHBOARD_HEADERS if is_dashboard(scope["path"]) else ())

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def _refuse_host(send: Send, host: str | None) -> None:
    shown = (host or "(none)")[:100]
    body = json.dumps({"error": {
        "code": "bad_host",
        "message": f"Host {shown!r} is not one this service answers to; the operator adds names "
        "with `edgetailor serve --allow-host NAME`",
        "fields": [],
    }}).encode()  # fmt: skip
    await send({
        "type": "http.response.start", "status": 400,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()), *COMMON_HEADERS],
    })  # fmt: skip
    await send({"type": "http.response.body", "body": body})
