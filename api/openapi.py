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
    422: _error("A parameter failed validation; error.field names it."),
}
#: Errors of the routes that change state.
WRITE_ERRORS: dict[int, ResponseSpec] = {
    **ERRORS,
    400: _error("The body is not JSON."),
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
