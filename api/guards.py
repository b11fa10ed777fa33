"""Who may call what: bearer token → :class:`Principal`, checked against the route's scope.

``read`` routes are the GETs (and /metrics); ``operate`` routes change state.
The principal is left on ``connection.state.principal`` for the audit row.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler
from litestar.types import Guard

from tierbox.api.auth import INSECURE_DEV, Principal, Scope, TokenStore, bearer
from tierbox.ops.errors import RequestError


def authenticate(connection: ASGIConnection) -> Principal:  # type: ignore[type-arg]
    """The caller's principal; 401 without a token or with an unknown one."""
    if connection.app.state.auth_disabled:
        return INSECURE_DEV
    secret = bearer(connection.headers.get("authorization"))
    if secret is None:
        raise RequestError(401, "missing bearer token: send Authorization: Bearer <token>", code="unauthenticated")
    store: TokenStore = connection.app.state.tokens
    principal = store.resolve(secret)
    if principal is None:
        raise RequestError(401, "unknown or revoked token", code="invalid_token")
    return principal


def require(scope: Scope) -> Guard:
    """A guard letting through principals whose scope covers ``scope``; 403 otherwise."""
    def guard(connection: ASGIConnection, _: BaseRouteHandler) -> None:  # type: ignore[type-arg]
        principal = authenticate(connection)
        if not principal.may(scope):
            raise RequestError(403, f"token {principal.name!r} has scope {principal.scope!r}; this needs {scope!r}")
        connection.state.principal = principal
    return guard
