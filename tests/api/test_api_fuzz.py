"""Schema-driven fuzzing: requests generated from ``/schema/openapi.json``; none may get a 5xx, and every
answer is documented for its operation and, when an error, has the JSON error shape.

Three kinds, all against the in-process app on this test's own database (seeded dead letters give
the generator real job ids to stumble on):

* hypothesis-generated cases per operation, valid and invalid (schemathesis' positive and negative
  modes), each sent with an operate token and with none (so the auth paths run too);
* hostile strings in every query and path parameter and every string of every body, derived from the
  schema, so no parameter is left to chance: NUL, other control characters, lone surrogates, bytes
  that are not UTF-8, strings over the documented maximum. Each must answer 422 ``invalid`` naming it;
* stateful sequences (schemathesis' state machine over the links it infers: list -> show -> redrive ...).

``make test`` runs a small share (``MAX_EXAMPLES`` per operation). The release check runs the same
tests longer: ``FUZZ_EXAMPLES=500 .venv/bin/pytest tests/api/test_api_fuzz.py`` (docs/bad_input.md).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from litestar import Litestar
from litestar.testing import TestClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, status_code_conformance

from outbox.config import Settings
from tests.api.test_api import OPERATE, TOKENS, assert_error
from tests.factories import dead_job
from tierbox.api.app import create_app
from tierbox.api.config import ApiConfig

#: Examples per operation, mode and auth; the default keeps this file to tens of seconds.
MAX_EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "12"))
#: Stateful scenarios (each up to STEPS calls).
SCENARIOS = max(5, MAX_EXAMPLES // 2)
# The time limit grows with the examples: an accepted POST /admin/reconcile runs a real round, which
# waits INFLIGHT_SETTLE_S (1.5 s) for the pools' reports by design, so 500 examples of it take about
# 13 minutes (pyproject's 120 s per test is for the default 12).
pytestmark = pytest.mark.timeout(max(120, MAX_EXAMPLES * 4))
STEPS = 6
CHECKS = [not_a_server_error, status_code_conformance]


@pytest.fixture
def app(db_url: str) -> Iterator[Litestar]:
    """The API on a fresh database holding a few dead letters."""
    with psycopg.connect(db_url) as conn:
        for reason in ("failed", "non_retryable"):
            dead_job(conn, "sample.webhook", reason=reason)
    yield create_app(Settings(database_url=db_url, queue_prefix="fuzz."), ApiConfig(tokens=TOKENS))


@pytest.fixture(scope="module")
def offline() -> Iterator[TestClient[Any]]:
    """The API on a Postgres nobody listens on: hostile input must be refused before any query, so a
    request that got as far as the database would answer 503, not the 422 expected."""
    settings = Settings(database_url="postgresql://postgres@127.0.0.1:1/none", queue_prefix="fuzz.")
    with TestClient(create_app(settings, ApiConfig(tokens=TOKENS))) as client:
        yield client


def _document() -> dict[str, Any]:
    # The app's own schema, built without touching a database (the engine connects lazily).
    doc: dict[str, Any] = create_app(Settings(), ApiConfig(insecure_dev=True)).openapi_schema.to_schema()
    return doc


DOC = _document()
OPERATIONS = [(method.upper(), path) for path, item in sorted(DOC["paths"].items()) for method in sorted(item)]
#: Operations with something to make invalid (negative mode has nothing to negate on ``/healthz``).
WITH_INPUT = [(m, p) for m, p in OPERATIONS
              if DOC["paths"][p][m.lower()].get("parameters") or DOC["paths"][p][m.lower()].get("requestBody")]
FUZZED = [(m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS] + \
         [(m, p, GenerationMode.NEGATIVE) for m, p in WITH_INPUT]


def assert_documented_error(response: Any) -> None:
    """An error answer is ``{"error": {"code", "message", "field"}}``."""
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"} and {"code", "message", "field"} <= set(body["error"]), body


@pytest.mark.parametrize(("method", "path", "mode"), FUZZED, ids=[f"{m} {p} {g.value}" for m, p, g in FUZZED])
def test_no_server_error(app: Litestar, method: str, path: str, mode: GenerationMode) -> None:
    operation = schemathesis.openapi.from_asgi("/schema/openapi.json", app)[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any) -> None:
        for headers in (OPERATE, {}):
            response = case.call(headers={**(case.headers or {}), **headers})
            case.validate_response(response, checks=CHECKS)
            assert_documented_error(response)

    fuzz()


# --- hostile strings in every parameter, from the schema ------------------------------------------------

#: Each hostile value of a parameter, as it goes on the wire (percent-encoded bytes).
HOSTILE = {
    "NUL": "%00", "NUL inside": "a%00b", "SOH": "%01", "tab": "a%09b", "line feed": "a%0Ab", "CR": "%0D",
    "ESC": "%1B", "US": "%1F", "DEL": "%7F", "lone high surrogate": "%ED%A0%80",
    "lone low surrogate": "x%ED%BF%BF", "not UTF-8": "%FF%FE", "overlong NUL": "%C0%80",
}
#: Valid values for the path parameters an operation needs besides the one under test.
VALID_PATH = {"job_id": str(uuid.UUID(int=1)), "tier": "high", "task": "t", "fingerprint": "0123abcd"}


def _parameters() -> list[tuple[str, str, str, str, str]]:
    """(method, path, location, name, wire value) for every parameter of every operation and hostile value."""
    cases = []
    for method, path in OPERATIONS:
        for param in DOC["paths"][path][method.lower()].get("parameters", []):
            if param["in"] not in ("path", "query"):
                continue
            limit = param["schema"].get("maxLength")
            values = {**HOSTILE, "too long": "x" * ((limit or 10_000) + 1)}
            cases += [(method, path, param["in"], param["name"], f"{kind}={value}") for kind, value in values.items()]
    return cases


PARAMETERS = _parameters()


@pytest.mark.parametrize(("method", "path", "where", "name", "value"), PARAMETERS,
                         ids=[f"{m} {p} {n} {v.split('=')[0]}" for m, p, _, n, v in PARAMETERS])
def test_hostile_strings_in_every_parameter(offline: TestClient[Any], method: str, path: str, where: str, name: str,
                                            value: str) -> None:
    wire = value.split("=", 1)[1]
    url = path
    for other in VALID_PATH:
        url = url.replace("{" + other + "}", wire if other == name and where == "path" else VALID_PATH[other])
    if where == "query":
        url += f"?{name}={wire}"
    assert_error(offline.request(method, url, headers=OPERATE), 422, "invalid", name)


def _schema(ref: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in ref:
        ref = DOC["components"]["schemas"][ref["$ref"].rsplit("/", 1)[1]]
    return ref


def _string_paths(schema: dict[str, Any], prefix: str = "") -> Iterator[str]:
    """Dotted paths of every string property of a body schema (through refs and unions)."""
    schema = _schema(schema)
    for option in schema.get("oneOf", []) + schema.get("anyOf", []):
        yield from _string_paths(option, prefix)
    for prop, sub in schema.get("properties", {}).items():
        sub = _schema(sub)
        if any(_is_string(o) for o in [sub, *sub.get("oneOf", []), *sub.get("anyOf", [])]):
            yield f"{prefix}{prop}"
        yield from _string_paths(sub, f"{prefix}{prop}.")


def _is_string(schema: dict[str, Any]) -> bool:
    kind = _schema(schema).get("type")
    return kind == "string" or (isinstance(kind, list) and "string" in kind)


def _bodies() -> list[tuple[str, str, str]]:
    cases = []
    for method, path in OPERATIONS:
        body = DOC["paths"][path][method.lower()].get("requestBody")
        if body:
            schema = body["content"]["application/json"]["schema"]
            cases += [(method, path, field) for field in sorted(set(_string_paths(schema)))]
    return cases


BODIES = _bodies()


def _nested(field: str, value: str) -> dict[str, Any]:
    head, _, rest = field.partition(".")
    return {head: _nested(rest, value) if rest else value}


@pytest.mark.parametrize(("method", "path", "field"), BODIES, ids=[f"{m} {p} {f}" for m, p, f in BODIES])
def test_nul_in_every_body_string(offline: TestClient[Any], method: str, path: str, field: str) -> None:
    url = path
    for name, value in VALID_PATH.items():
        url = url.replace("{" + name + "}", value)
    body = json.dumps(_nested(field, "a\x00b")).encode()  # json.dumps writes NUL as \u0000
    response = offline.request(method, url, content=body, headers={**OPERATE, "content-type": "application/json"})
    assert_error(response, 422, "invalid", field)


def test_every_parameter_and_body_string_is_covered() -> None:
    names = {(p, n) for _, p, _, n, _ in PARAMETERS}
    assert ("/admin/dlq", "error_type") in names and ("/admin/tasks/{task}/resume", "task") in names
    assert ("/admin/overrides/{task}", "task") in names and ("/admin/jobs", "cursor") in names
    assert {f for _, p, f in BODIES if p == "/admin/dlq/redrive"} >= {"reason", "filter.task", "target_tier"}


# --- stateful sequences -----------------------------------------------------------------------------------

def test_stateful_sequences(app: Litestar) -> None:
    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app)
    statuses: list[int] = []

    class Workflow(schema.as_state_machine()):  # type: ignore[misc]
        """Chains of calls over the links schemathesis infers (a listed job id shown, redriven, discarded)."""

        def get_call_kwargs(self, case: Any) -> dict[str, Any]:
            return {"headers": {**(case.headers or {}), **OPERATE}}

        def validate_response(self, response: Any, case: Any, additional_checks: Any = None, **kwargs: Any) -> None:
            statuses.append(response.status_code)
            case.validate_response(response, checks=CHECKS)
            assert_documented_error(response)

    Workflow.run(settings=settings(max_examples=SCENARIOS, stateful_step_count=STEPS, deadline=None,
                                   derandomize=True, database=None, suppress_health_check=list(HealthCheck)))
    assert len(statuses) > SCENARIOS and any(s < 300 for s in statuses), statuses  # sequences really ran


def test_every_operation_is_fuzzed() -> None:
    assert len(OPERATIONS) >= 10 and ("POST", "/admin/dlq/redrive") in OPERATIONS
