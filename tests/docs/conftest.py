"""A migrated database holding sample jobs and dead letters, shared by the SQL examples.

Each SQL example runs inside a transaction that is rolled back, so one seeded database
serves them all; it is cloned from the session's migrated template and dropped afterwards.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest

from tests.docs.seed import seed


def _with_db(url: str, name: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def seeded_db_url(service_urls: dict[str, str], template_db: str) -> Iterator[str]:
    """A libpq URL of a migrated database with succeeded, retrying, dead, pending and running jobs."""
    admin = service_urls["postgres"]
    name = f"tierbox_docs_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    url = _with_db(admin, name)
    try:
        seed("postgresql+psycopg://" + url.partition("://")[2])
        yield url
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
