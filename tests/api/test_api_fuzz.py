"""Schema-driven fuzzing: schemathesis generates requests from ``/schema/openapi.json``; none may get a 5xx.

Bounded to stay fast: a few examples per operation, against the in-process app on
this test's own database, with an operate token (so the write paths run too) and
with no token (so the auth paths run). Seeded dead letters give the generator
real job ids to stumble on.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from litestar import Litestar

from outbox.config import Settings
from tests.api.test_api import OPERATE, TOKENS
from tests.ledger.test_redrive import dead_job
from tierbox.api.app import create_app
from tierbox.api.config import ApiConfig

#: Examples per operation and auth mode; the whole file stays well under 30 s.
MAX_EXAMPLES = 12


@pytest.fixture
def app(db_url: str) -> Iterator[Litestar]:
    """The API on a fresh database holding a few dead letters."""
    with psycopg.connect(db_url) as conn:
        for reason in ("failed", "non_retryable"):
            dead_job(conn, "sample.webhook", reason=reason)
    yield create_app(Settings(database_url=db_url, queue_prefix="fuzz."), ApiConfig(tokens=TOKENS))


def _operations() -> list[tuple[str, str]]:
    # The app's own schema, built without touching a database (the engine connects lazily).
    doc = create_app(Settings(), ApiConfig(insecure_dev=True)).openapi_schema.to_schema()
    return [(method.upper(), path) for path, item in sorted(doc["paths"].items()) for method in sorted(item)]


OPERATIONS = _operations()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_no_server_error(app: Litestar, method: str, path: str) -> None:
    from schemathesis.checks import not_a_server_error

    operation = schemathesis.openapi.from_asgi("/schema/openapi.json", app)[path][method]

    @given(case=operation.as_strategy())
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        for headers in (OPERATE, {}):
            response = case.call(headers={**(case.headers or {}), **headers})
            case.validate_response(response, checks=[not_a_server_error])
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"]), body

    fuzz()


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 10 and ("POST", "/admin/dlq/redrive") in OPERATIONS
