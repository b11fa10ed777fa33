"""Query and path parameters of the routes, as Litestar annotations; the checks live in :mod:`tierbox.ops.params`."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from litestar.di import NamedDependency
from litestar.openapi.spec import OpenAPIFormat
from litestar.params import PathParameter, QueryParameter
from sqlalchemy.ext.asyncio import AsyncConnection

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

__all__ = ["Cursor", "Db", "FilterText", "JobIdPath", "Limit", "Since", "Until", "job_id", "tier"]
