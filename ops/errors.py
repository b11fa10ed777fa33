"""A request an operator service refuses: the caller must change it (bad field, no such job, conflict).

The admin API returns it as ``{"error": {"code", "message", "field"}}`` with its HTTP
status (see :mod:`tierbox.api.errors`); the CLI prints its message and exits 2 for
bad input, 1 otherwise (see :mod:`tierbox.cli.errors`).
"""

from __future__ import annotations

from outbox.errors import RedriveError

#: The stable error code of each status (the admin API's documented codes). The API reads no body but JSON,
#: so its one 400 is ``malformed_json`` (``bad_request`` was never documented; truncated JSON answered it).
CODES = {400: "malformed_json", 401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
         409: "conflict", 413: "body_too_large", 415: "unsupported_media_type", 422: "invalid",
         503: "unavailable"}


class RequestError(Exception):
    """An error to return as-is: HTTP status, stable code, message, field."""

    def __init__(self, status: int, message: str, *, code: str | None = None, field: str | None = None) -> None:
        self.status = status
        self.code = code or CODES.get(status, "error")
        self.message = message
        self.field = field
        super().__init__(message)


def invalid(field: str, message: str) -> RequestError:
    """A 422 naming ``field``."""
    return RequestError(422, f"{field}: {message}", field=field)


def from_redrive_error(exc: RedriveError) -> RequestError:
    """404 when there is no dead letter, 409 when it was already redriven or discarded."""
    return RequestError(404 if exc.not_found else 409, str(exc))
