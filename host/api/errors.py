"""JSON errors a person can act on: ``{"error": {"code", "message", "fields"}}``.

404 names the id that is unknown, 422 names each field that is wrong and why, 403 says how the
operator allows what was refused, and an :class:`EdgeTailorError` raised by the layers below
becomes 400 with its message (which already says what to do); :data:`DOMAIN_STATUS` lists the
kinds of error that answer otherwise.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from host.campaign.spec import SpecError
from host.errors import ConflictError, NotAllowedError, NotFoundError
from shared.errors import EdgeTailorError

logger = logging.getLogger(__name__)


class FieldError(BaseModel):
    field: str
    message: str


class ErrorInfo(BaseModel):
    code: str
    message: str
    fields: list[FieldError] = []


class ErrorBody(BaseModel):
    error: ErrorInfo


class ApiError(Exception):
    """An answer other than success: its status, a code, and one line a person can act on."""

    def __init__(self, status: int, code: str, message: str) -> None:
        message = " ".join(message.split())  # runtimes and user code raise multi-line messages
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def not_found(kind: str, ident: str, hint: str = "") -> ApiError:
    return ApiError(404, "not_found", f"no {kind} {ident!r}" + (f"; {hint}" if hint else ""))


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "the request cannot be carried out, and why"},
    404: {"model": ErrorBody, "description": "the id is unknown"},
    422: {"model": ErrorBody, "description": "a field is invalid"},
}
AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "no bearer token"},
    403: {"model": ErrorBody, "description": "the token is not valid, or its scope is too small"},
}
# Errors of the layers below that mean something other than "cannot be carried out".
DOMAIN_STATUS: dict[type[EdgeTailorError], tuple[int, str]] = {
    NotAllowedError: (403, "not_allowed"),
    NotFoundError: (404, "not_found"),
    ConflictError: (409, "conflict"),
}


def _body(
    status: int,
    code: str,
    message: str,
    fields: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    extra = {**(headers or {}), **({"WWW-Authenticate": "Bearer"} if status == 401 else {})}
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "fields": fields or []}},
        headers=extra or None,
    )


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        return _body(exc.status, exc.code, exc.message)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [
            {"field": ".".join(str(p) for p in err.get("loc", ())), "message": str(err.get("msg"))}
            for err in exc.errors()
        ]
        text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
        return _body(422, "invalid_request", f"invalid request: {text}", fields)

    @app.exception_handler(EdgeTailorError)
    async def _domain(_request: Request, exc: EdgeTailorError) -> JSONResponse:
        if isinstance(exc, SpecError):  # a campaign body that does not validate: its fields
            fields = [{"field": f"body.{f}", "message": m} for f, m in exc.fields]
            text = "; ".join(f"{f['field']}: {f['message']}" for f in fields)
            return _body(422, "invalid_request", f"invalid request: {text}", fields)
        for kind, (status, code) in DOMAIN_STATUS.items():
            if isinstance(exc, kind):
                return _body(status, code, " ".join(str(exc).split()))
        return _body(400, type(exc).__name__, " ".join(str(exc).split()))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # RFC 9110: every method the resource takes
            given = {m.strip() for m in headers.get("Allow", "").split(",") if m.strip()}
            headers["Allow"] = ", ".join(sorted(given | set(allowed_methods(request))))
        return _body(exc.status_code, code, str(exc.detail), headers=headers)


def allowed_methods(request: Request) -> list[str]:
    """Every method the request's path takes: from the OpenAPI document (routers nest, and the
    router names the methods of the first route that matches only), and from Starlette's own
    answer for the routes outside it."""
    paths = getattr(request.app.state, "method_index", None)
    if paths is None:
        paths = [
            (re.compile("^" + re.sub(r"\\{[^}/]+\\}", "[^/]+", re.escape(path)) + "$"),
             {m.upper() for m in item if m in _HTTP_METHODS})
            for path, item in request.app.openapi().get("paths", {}).items()
        ]  # fmt: skip
        request.app.state.method_index = paths
    methods: set[str] = set()
    for pattern, verbs in paths:
        if pattern.match(request.url.path):
            methods |= verbs
    return sorted(methods)


_HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
