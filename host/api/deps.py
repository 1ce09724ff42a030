"""Dependencies of the routers: the context on ``app.state``, and the bearer token check.

Every route under ``/api`` needs a valid token whose scope covers it (host.security.Scope: read <
operate < admin), from any address; ``serve --open-reads`` lets reads through without one.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from host.api.context import ApiContext
from host.api.errors import ApiError
from host.security import Scope
from host.store.service import ServiceStore

_bearer = HTTPBearer(
    auto_error=False,
    description="a token from `edgetailor token create --scope read|operate|admin` (or the one "
    "`edgetailor serve` printed on its first start, which is admin)",
)


def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def token_scope(ctx: ApiContext, credentials: HTTPAuthorizationCredentials | None) -> Scope:
    """The scope of the request's token; 401 without one, 403 for one that is not valid."""
    if credentials is None or not credentials.credentials:
        raise ApiError(
            401, "unauthorized",
            "this needs an API token: send `Authorization: Bearer TOKEN` (make one with "
            "`edgetailor token create --scope read` on the service's machine)",
        )  # fmt: skip
    scope = ServiceStore(ctx.store).token_scope(credentials.credentials)
    if scope is None:
        raise ApiError(
            403, "forbidden",
            "the API token is not valid (revoked, or from another database); make one with "
            "`edgetailor token create` on the service's machine",
        )  # fmt: skip
    return scope


def require(needed: Scope, scope: Scope, what: str = "this") -> None:
    """403 unless ``scope`` covers ``needed``."""
    if not scope.allows(needed):
        raise ApiError(
            403, "insufficient_scope",
            f"{what} needs a token with scope {needed.value} (this one is {scope.value}); make "
            f"one with `edgetailor token create --scope {needed.value}`",
        )  # fmt: skip


def _needs(needed: Scope) -> Any:
    def check(ctx: Ctx, credentials: Credentials) -> Scope:
        if needed is Scope.READ and ctx.open_reads and credentials is None:
            return Scope.READ
        scope = token_scope(ctx, credentials)
        require(needed, scope)
        return scope

    return check


Reader = Depends(_needs(Scope.READ))
Operator = Depends(_needs(Scope.OPERATE))
# The scope of the caller, for routes whose need depends on the request (a campaign that names
# module code needs admin; one of builtins only, operate).
CallerScope = Annotated[Scope, Depends(_needs(Scope.OPERATE))]
