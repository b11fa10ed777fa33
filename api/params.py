"""Query and path parameters of the routes, as Litestar annotations, and :func:`screen`, the one check of
hostile input every request passes before a parameter is parsed or a connection taken.

The value checks (a UUID, a known tier) live in :mod:`tierbox.ops.params`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Request
from litestar.di import NamedDependency
from litestar.handlers import HTTPRouteHandler
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import BodyKwarg, ParameterKwarg, PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.models import MAX_TEXT
from tierbox.ops.params import job_id, tier

#: A filter value: at most MAX_TEXT characters.
FilterText = Annotated[str | None, QueryParameter(min_length=1, max_length=MAX_TEXT)]
#: Page size.
Limit = Annotated[int, QueryParameter(ge=1, le=200, description="Page size (1..200).")]
#: Opaque keyset cursor from a previous page's ``next_cursor``.
Cursor = Annotated[str | None, QueryParameter(max_length=MAX_TEXT, description="next_cursor of the previous page.")]
#: The job id path parameter (parsed by :func:`job_id`, so a bad one is a 422, not a 404).
JobIdPath = Annotated[str, PathParameter(description="The job's UUID.", max_length=64, format=OpenAPIFormat.UUID)]


#: A time bound of a filter (UTC if it names no zone).
Since = Annotated[datetime | None, QueryParameter(description="At or after (ISO 8601; jobs: default 24 h ago).")]
Until = Annotated[datetime | None, QueryParameter(description="Before (ISO 8601).")]
#: The request's pooled read connection (see ``api.app.provide_db``).
Db = NamedDependency[AsyncConnection]

#: What no query or path parameter may hold: C0 control characters, tab included (no task, tier, cursor
#: or error type holds one; in a filter it only forges log lines or hides a probe), DEL, and surrogates
#: (a lone one cannot be encoded for Postgres). Postgres itself refuses only NUL in text.
HOSTILE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")
#: The ceiling of a parameter that documents no maximum of its own (a time, a number, an enum member):
#: far above any valid value, so an over-long one is refused before a connection is taken for it.
MAX_PARAM_CHARS = 256
_NAMES = {0: "NUL", 9: "a tab", 10: "a line feed", 13: "a carriage return", 0x7F: "DEL"}


async def screen(request: Request[Any, Any, Any]) -> None:
    """The app's ``before_request``: refuse hostile parameters (422 ``invalid``) and bodies that are not the
    JSON object the route reads (400 ``malformed_json``), before any is parsed or reaches Postgres.

    It runs after the guards, so a caller without a token still learns that first.
    """
    handler = request.route_handler
    wire = _parameters(handler)
    for name, value in _query(request.scope.get("query_string", b"")):
        if name in wire:
            _check(name, value, wire[name])
    raw_path = request.scope.get("raw_path", b"").partition(b"?")[0]
    path_is_utf8 = _utf8(unquote_to_bytes(raw_path)) is not None
    for name, value in request.path_params.items():
        if isinstance(value, str):
            if not path_is_utf8 and "\ufffd" in value:  # the server replaced bytes that are not UTF-8
                raise invalid(name, "not UTF-8 (a lone surrogate, or bytes of another encoding)")
            _check(name, value, wire.get(name, MAX_PARAM_CHARS))
    body = _body_parameter(handler)
    if body is not None:
        check_body(await request.body(), optional=body)


def _check(name: str, value: str | None, max_length: int) -> None:
    if value is None:
        raise invalid(name, "not UTF-8 (a lone surrogate, or bytes of another encoding)")
    if (found := HOSTILE.search(value)) is not None:
        raise invalid(name, f"holds {_describe(found.group())} at character {found.start()}: refused")
    if len(value) > max_length:
        raise invalid(name, f"longer than {max_length} characters ({len(value)})")


def _describe(char: str) -> str:
    code = ord(char)
    if 0xD800 <= code <= 0xDFFF:
        return f"a lone surrogate (U+{code:04X})"
    return _NAMES.get(code, f"a control character (U+{code:04X})")


def _query(raw: bytes) -> Iterator[tuple[str, str | None]]:
    # Parsed from the raw bytes: Litestar's parser replaces bytes that are not UTF-8 with U+FFFD, hiding them.
    for pair in raw.split(b"&"):
        if pair:
            name, _, value = pair.partition(b"=")
            key = _utf8(unquote_to_bytes(name.replace(b"+", b" ")))
            if key is not None:
                yield key, _utf8(unquote_to_bytes(value.replace(b"+", b" ")))


def _utf8(data: bytes) -> str | None:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


@functools.cache
def _parameters(handler: HTTPRouteHandler) -> dict[str, int]:
    """Wire name -> maximum length of each query and path parameter the handler declares."""
    out: dict[str, int] = {}
    for name, field in handler.parsed_fn_signature.parameters.items():
        kwarg = field.kwarg_definition
        if isinstance(kwarg, ParameterKwarg) and not kwarg.header and not kwarg.cookie:
            out[kwarg.query or kwarg.name or name] = kwarg.max_length or MAX_PARAM_CHARS
    return out


@functools.cache
def _body_parameter(handler: HTTPRouteHandler) -> bool | None:
    """None if the handler reads no body, else whether its body is optional."""
    field = handler.parsed_fn_signature.parameters.get("data")
    if field is None or not isinstance(field.kwarg_definition, BodyKwarg | None):
        return None
    return field.is_optional


def malformed(message: str) -> RequestError:
    """A 400 ``malformed_json``: the body cannot be read as the JSON object the route expects."""
    return RequestError(400, message, code="malformed_json")


def check_body(raw: bytes, *, optional: bool) -> None:
    """The body is one JSON object (or absent or ``null`` where ``optional``) and no string in it holds NUL."""
    if raw == b"":
        if optional:
            return
        raise malformed("the body is empty: this route needs a JSON object")
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:  # truncated, trailing bytes, not UTF-8, a lone surrogate escape
        raise malformed(f"the body is not JSON: {exc}") from None
    if value is None and optional:
        return
    if not isinstance(value, dict):
        raise malformed(f"the body must be a JSON object, not {_json_type(value)}")
    if (where := _nul_at(value, "")) is not None:
        # msgspec decodes \u0000 happily, but no text column of Postgres can store it.
        raise invalid(where, "holds NUL (\\u0000), which Postgres text cannot store")


def _json_type(value: Any) -> str:
    kinds = {list: "an array", str: "a string", bool: "a boolean", int: "a number", float: "a number"}
    return "null" if value is None else kinds.get(type(value), type(value).__name__)


def _nul_at(value: Any, path: str) -> str | None:
    """The dotted path of the first string (or key) holding NUL, or None."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    items: list[tuple[str, Any]] = []
    if isinstance(value, dict):
        for key, item in value.items():
            step = f"{path}.{key}" if path else key
            if "\x00" in key:
                return step.replace("\x00", "\\u0000")
            items.append((step, item))
    elif isinstance(value, list):
        items = [(f"{path}[{i}]", item) for i, item in enumerate(value)]
    for step, item in items:
        if (found := _nul_at(item, step)) is not None:
            return found
    return None


__all__ = ["Cursor", "Db", "FilterText", "JobIdPath", "Limit", "Since", "Until", "check_body", "job_id", "malformed",
           "screen", "tier"]
