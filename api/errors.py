"""Every error the admin API returns, as ``{"error": {"code", "message", "field"}}``.

::

    RequestError(status, code, message, field)    raised by our handlers
    ├── 400 malformed_json                     the body is not the JSON object the route reads (every 400)
    ├── 401 unauthenticated / invalid_token    no or unknown bearer token
    ├── 403 forbidden                          the token's scope is too small
    ├── 404 not_found                          no such job or dead letter, no such route
    ├── 409 conflict                           already redriven or discarded
    ├── 413 body_too_large
    ├── 422 invalid                            a field failed validation, or holds a control character, a
    │                                          lone surrogate or NUL (``field`` names it; see ``params.screen``)
    ├── 503 timeout / unavailable              a read hit its time limit, or Postgres is down
    └── 500 internal                           a bug: logged with its traceback, no details sent

Litestar's own exceptions (validation, auth, 404, 413) are mapped into the same
shape here, so no handler has to care.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap
from sqlalchemy.exc import DBAPIError, OperationalError

from outbox.errors import RedriveError
from tierbox.ops.errors import CODES as _CODES
from tierbox.ops.errors import RequestError, from_redrive_error

log = logging.getLogger("tierbox.api")

#: SQLSTATE of a statement cancelled by statement_timeout.
QUERY_CANCELED = "57014"
# msgspec says "... - at `$.filter.tier`" for nested fields.
_PATH = re.compile(r"at `\$\.([\w.\[\]]+)`")
_UNKNOWN = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
# Python names of parameters whose query name is a word Litestar reserves (``state``).
_ALIASES = {"dl_state": "state"}


class ErrorDetail(msgspec.Struct, frozen=True):
    """What went wrong: a stable ``code``, a human ``message``, the ``field`` at fault if any."""

    code: str
    message: str
    field: str | None = None


class ErrorBody(msgspec.Struct, frozen=True):
    """The body of every error response."""

    error: ErrorDetail


def _respond(status: int, code: str, message: str, field: str | None = None,
             headers: dict[str, str] | None = None) -> Response[ErrorBody]:
    return Response(ErrorBody(ErrorDetail(code, message, field)), status_code=status, headers=headers)


def _api_error(_: Request[Any, Any, Any], exc: RequestError) -> Response[ErrorBody]:
    headers = {"WWW-Authenticate": 'Bearer realm="tierbox"'} if exc.status == 401 else None
    return _respond(exc.status, exc.code, exc.message, exc.field, headers)


def _validation(_: Request[Any, Any, Any], exc: ValidationException) -> Response[ErrorBody]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    if not extra:  # Litestar raises it without details for a body that is not JSON
        return _respond(400, "malformed_json", str(exc.detail))
    first = extra[0] if isinstance(extra[0], dict) else {}
    message = str(first.get("message", exc.detail))
    field = _field(str(first.get("key", "")), message)
    return _respond(422, "invalid", f"{field}: {message}" if field else message, field)


def _field(key: str, message: str) -> str | None:
    # The key is "data" for whole-body errors; msgspec's message names the nested path or unknown field.
    match = _PATH.search(message) or _UNKNOWN.search(message)
    if match:
        return match.group(1)
    return None if key in ("", "data") else _ALIASES.get(key, key)


def _http(_: Request[Any, Any, Any], exc: HTTPException) -> Response[ErrorBody]:
    status = exc.status_code
    if status >= 500:
        log.error("action=api.http_error status=%s detail=%s", status, exc.detail)
    headers = {"WWW-Authenticate": 'Bearer realm="tierbox"'} if status == 401 else None
    # The API reads no body but JSON, so every 400 Litestar raises (truncated, not UTF-8, ...) is a body
    # that is not JSON; ``params.screen`` refuses those first, this keeps the code right if one slips past.
    code = _CODES.get(status, "error")
    return _respond(status, code, str(exc.detail), None, headers)


def _redrive(_: Request[Any, Any, Any], exc: RedriveError) -> Response[ErrorBody]:
    return _api_error(_, from_redrive_error(exc))


def _database(request: Request[Any, Any, Any], exc: DBAPIError) -> Response[ErrorBody]:
    if getattr(exc.orig, "sqlstate", None) == QUERY_CANCELED:  # the statement_timeout of reads
        return _respond(503, "timeout", "the query took too long: narrow the filters (e.g. a time range)")
    if isinstance(exc, OperationalError):
        log.error("action=api.postgres_unreachable path=%s error=%s", request.url.path, str(exc).splitlines()[0])
        return _respond(503, "unavailable", "Postgres is unreachable")
    return _unexpected(request, exc)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[ErrorBody]:
    log.exception("action=api.internal_error path=%s", request.url.path, exc_info=exc)
    return _respond(500, "internal", "internal error; the server log has the details")


HANDLERS: ExceptionHandlersMap = {
    RequestError: _api_error,
    ValidationException: _validation,
    RedriveError: _redrive,
    DBAPIError: _database,
    HTTPException: _http,
    Exception: _unexpected,
}
