"""Input checks shared by the routes: job ids and tier names, refused with a 422 naming the field."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

from api.errors import invalid
from api.models import MAX_TEXT
from outbox.config import Settings

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


def job_id(value: str) -> uuid.UUID:
    """``value`` as a UUID; 422 naming ``job_id`` otherwise."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid("job_id", f"not a UUID: {value[:64]!r}") from None


def tier(settings: Settings, value: str | None, field: str = "tier") -> str | None:
    """``value`` if it names a tier of the topology; 422 naming ``field`` otherwise."""
    if value is None or value in settings.topology.tiers:
        return value
    known = ", ".join(settings.topology.tiers)
    raise invalid(field, f"unknown tier {value[:64]!r}; one of {known}")
