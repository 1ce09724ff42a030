"""JSON errors a person can act on: ``{"error": {"code", "message", "fields"}}``.

404 names the id that is unknown, 422 names each field that is wrong and why, and an
:class:`EdgeTailorError` raised by the layers below becomes 400 with its message (which already
says what to do).
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

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
    def __init__(self, status: int, code: str, message: str) -> None:
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
    403: {"model": ErrorBody, "description": "the token is not valid"},
}


def _body(
    status: int, code: str, message: str, fields: list[dict[str, str]] | None = None
) -> JSONResponse:
    return JSONResponse(
        status_code=status,
        content={"error": {"code": code, "message": message, "fields": fields or []}},
        headers={"WWW-Authenticate": "Bearer"} if status == 401 else None,
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
        return _body(400, type(exc).__name__, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _body(exc.status_code, code, str(exc.detail))
