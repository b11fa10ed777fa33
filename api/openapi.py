"""OpenAPI document settings: bearer security and the error responses every route can give."""

from __future__ import annotations

from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme

from tierbox.api.errors import ErrorBody

_SCHEME = "bearer"


def _error(description: str) -> ResponseSpec:
    return ResponseSpec(data_container=ErrorBody, description=description)


#: Errors of every authenticated route.
ERRORS: dict[int, ResponseSpec] = {
    401: _error("No bearer token, or an unknown one."),
    403: _error("The token's scope does not allow this."),
    404: _error("No such job or dead letter."),
    422: _error("A parameter failed validation, or holds a control character, a lone surrogate or bytes that "
                "are not UTF-8, or is longer than its maximum (code invalid); error.field names it."),
    503: _error("Postgres (or Redis, for breakers) is unreachable, or a read hit its time limit "
                "(code unavailable or timeout)."),
}
#: Errors of the routes that change state.
WRITE_ERRORS: dict[int, ResponseSpec] = {
    **ERRORS,
    400: _error("The body is not the JSON object this route reads: truncated, trailing bytes, not UTF-8, "
                "a lone surrogate escape, another type at the top level, or missing (code malformed_json)."),
    422: _error("A parameter or a body field failed validation, or a parameter holds a control character, a "
                "lone surrogate or bytes that are not UTF-8, or a body string holds NUL (code invalid); "
                "error.field names it."),
    409: _error("Already redriven or discarded (the SQL guard refused it)."),
    413: _error("The body is too large."),
}


def config(version: str) -> OpenAPIConfig:
    """The schema served at ``/schema`` (``/schema/openapi.json``)."""
    return OpenAPIConfig(
        title="Tierbox admin API", version=version, path="/schema",
        description="Dead letters, jobs and tier health; redrive and discard, every action audited. "
                    "Bearer token scopes: read (GET, /metrics), operate (POST).",
        components=Components(security_schemes={_SCHEME: SecurityScheme(type="http", scheme="bearer")}),
        security=[{_SCHEME: []}],
    )
