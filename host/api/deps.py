"""Dependencies of the routers: the context on ``app.state``, and the bearer token check."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from host.api.context import ApiContext
from host.api.errors import ApiError
from host.store.service import ServiceStore

_bearer = HTTPBearer(auto_error=False, description="the token `edgetailor serve` printed once")


def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


def _check(ctx: ApiContext, credentials: HTTPAuthorizationCredentials | None) -> None:
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401, "unauthorized",
            "this needs the API token: send `Authorization: Bearer TOKEN` (the token "
            "`edgetailor serve` printed on its first start; `--new-token` makes another)",
        )  # fmt: skip
    if not ServiceStore(ctx.store).check_token(credentials.credentials):
        raise ApiError(
            403, "forbidden",
            "the API token is not valid (revoked, or from another database); use the one "
            "`edgetailor serve` printed, or make a new one with `edgetailor serve --new-token`",
        )  # fmt: skip


def require_token(
    ctx: Ctx, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    """Mutations always need the token."""
    _check(ctx, credentials)


def read_access(
    request: Request,
    ctx: Ctx,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Reads are open to clients on this machine; anyone else needs the token too."""
    client = request.client.host if request.client is not None else ""
    if client in ctx.open_read_hosts:
        return
    _check(ctx, credentials)


Writer = Depends(require_token)
Reader = Depends(read_access)
