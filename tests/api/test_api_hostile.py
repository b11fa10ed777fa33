"""Hostile input at the admin API's boundary: control characters, lone surrogates, over-long strings, NUL in
bodies and malformed JSON of every kind. Each answers a documented 4xx naming the field; none reaches Postgres.

The proof that nothing reaches Postgres: the same requests against an app whose database is unreachable
still answer 422 (a request that got as far as a query would answer 503 ``unavailable``).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.api.test_api import OPERATE, READ, assert_error, audit_rows, client, dead, make_client, q

__all__ = ["client"]  # the fixture, imported for pytest

JSON = {"content-type": "application/json"}
LONG = "x" * 201  # MAX_TEXT (200) + 1

#: (method, path, body or None, field): a hostile query or path parameter, each answered 422 ``invalid``.
PARAMS: list[tuple[str, str, bytes | None, str]] = [
    ("GET", "/admin/dlq?task=%00", None, "task"),
    ("GET", "/admin/dlq?error_type=%00", None, "error_type"),
    ("GET", "/admin/dlq?tier=%00", None, "tier"),
    ("GET", "/admin/dlq?cursor=a%00", None, "cursor"),
    ("GET", "/admin/dlq?state=%00", None, "state"),
    ("GET", "/admin/dlq?reason=%00", None, "reason"),
    ("GET", "/admin/jobs?task=%00", None, "task"),
    ("GET", "/admin/jobs?task=a%01b", None, "task"),
    ("GET", "/admin/jobs?task=a%09b", None, "task"),   # tab: refused like every C0 control character
    ("GET", "/admin/jobs?task=a%0Ab", None, "task"),   # newline (log forging)
    ("GET", "/admin/jobs?task=%1F", None, "task"),
    ("GET", "/admin/jobs?task=%7F", None, "task"),     # DEL
    ("GET", "/admin/jobs?task=%ED%A0%80", None, "task"),  # a lone surrogate (U+D800) as UTF-8 bytes
    ("GET", "/admin/jobs?task=%FF", None, "task"),     # not UTF-8 at all
    ("GET", "/admin/jobs?status=%00", None, "status"),
    ("GET", "/admin/jobs?since=%00", None, "since"),
    ("GET", f"/admin/jobs?task={LONG}", None, "task"),
    ("GET", f"/admin/dlq?error_type={LONG}", None, "error_type"),
    ("GET", f"/admin/jobs?cursor={LONG}", None, "cursor"),
    ("GET", f"/admin/jobs?since={'1' * 257}", None, "since"),  # no maximum of its own: the 256 ceiling
    ("GET", f"/admin/dlq?limit={'1' * 257}", None, "limit"),
    ("GET", "/admin/dlq/%00", None, "job_id"),
    ("GET", "/admin/jobs/a%01", None, "job_id"),
    ("GET", "/admin/jobs/%ED%A0%80", None, "job_id"),
    ("GET", f"/admin/jobs/{'1' * 65}", None, "job_id"),
    ("POST", "/admin/dlq/%00/redrive", None, "job_id"),
    ("POST", "/admin/dlq/%00/discard", None, "job_id"),
    ("POST", "/admin/tasks/%00/resume", None, "task"),
    ("POST", "/admin/tasks/a%00b/pause", None, "task"),
    ("POST", "/admin/tasks/a%0Db/pause", None, "task"),
    ("POST", "/admin/tasks/%ED%A0%80/pause", None, "task"),
    ("POST", f"/admin/tasks/{LONG}/pause", None, "task"),
    ("POST", "/admin/tiers/%00/pause", None, "tier"),
    ("POST", "/admin/tiers/%00/resume", None, "tier"),
    ("DELETE", "/admin/overrides/%00", None, "task"),
    ("PUT", "/admin/overrides/%00", b'{"tier": "high", "hours": 1}', "task"),
    ("PUT", f"/admin/overrides/{LONG}", b'{"tier": "high", "hours": 1}', "task"),
]

#: (method, path, body, field): NUL in a string of the body (it would go into a text column), refused 422.
BODY_NUL: list[tuple[str, str, bytes, str]] = [
    ("POST", "/admin/tasks/t/pause", b'{"reason": "\\u0000"}', "reason"),
    ("POST", "/admin/tiers/high/pause", b'{"reason": "a\\u0000b"}', "reason"),
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 1, "reason": "\\u0000"}', "reason"),
    ("PUT", "/admin/overrides/t", b'{"tier": "hi\\u0000gh", "hours": 1}', "tier"),
    ("POST", "/admin/dlq/redrive", b'{"reason": "outage\\u0000"}', "reason"),
    ("POST", "/admin/dlq/redrive", b'{"reason": "x", "filter": {"task": "\\u0000"}}', "filter.task"),
    ("POST", "/admin/dlq/redrive", b'{"reason": "x", "target_tier": "\\u0000"}', "target_tier"),
    ("POST", f"/admin/dlq/{uuid.UUID(int=1)}/redrive", b'{"reason": "\\u0000"}', "reason"),
    ("POST", f"/admin/dlq/{uuid.UUID(int=1)}/discard", b'{"reason": "\\u0000"}', "reason"),
    ("POST", f"/admin/dlq/{uuid.UUID(int=1)}/discard", b'{"\\u0000": 1}', "\\u0000"),
]

#: (method, path, body, field): a number out of its range in a body or parameter, refused 422 before any
#: arithmetic or query. ``hours`` 1e10 once overflowed ``timedelta`` (OverflowError, a 500); a Last-Event-ID
#: above the bigint range, or a digit that is not ASCII ('\u00b2' passes str.isdigit(), not int()), was let through.
NUMBERS: list[tuple[str, str, bytes | None, str]] = [
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 1e10}', "hours"),
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 1e300}', "hours"),
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 2160.001}', "hours"),  # just over 90 days
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 0}', "hours"),
    ("PUT", "/admin/overrides/t", b'{"tier": "high", "hours": -1e300}', "hours"),
    ("GET", f"/admin/jobs/{uuid.UUID(int=1)}/events?last_event_id=9999999999999999999", None, "Last-Event-ID"),
    ("GET", f"/admin/jobs/{uuid.UUID(int=1)}/events?last_event_id=%C2%B2", None, "Last-Event-ID"),
    ("POST", "/admin/failure-groups/f/redrive", b'{"limit": 99999999999999999999999}', "limit"),
    ("POST", "/admin/failure-groups/f/redrive", b'{"batch": 1001}', "batch"),
    ("POST", "/admin/failure-groups/f/redrive", b'{"rate": 1e308}', "rate"),
    ("POST", "/admin/failure-groups/f/redrive", b'{"rate": 0.5}', "rate"),
]
#: The same for a page size: checked once the route has its read connection, so not in the offline test.
LIMITS: list[tuple[str, str, bytes | None, str]] = [
    ("GET", f"/admin/jobs?limit={'9' * 30}", None, "limit"),
    ("GET", "/admin/dlq?limit=-1", None, "limit"),
    ("GET", "/admin/failure-groups?limit=1e400", None, "limit"),
]


def _cursor(raw: str) -> str:
    """A cursor as the API encodes one (``ops/cursors.py``), here around a forged sort key."""
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


#: Forged DLQ cursors whose key is not a bigint: once ``int()`` raised (a 500) or Postgres refused the value.
FORGED_CURSORS = [_cursor("2026-01-01T00:00:00+00:00|99999999999999999999999"),
                  _cursor("2026-01-01T00:00:00+00:00|9223372036854775808"),  # bigint maximum + 1
                  _cursor("2026-01-01T00:00:00+00:00|\u00b2")]

#: Bodies that are not the JSON object the route reads, each answered 400 ``malformed_json``.
MALFORMED: list[tuple[str, bytes]] = [
    ("truncated", b'{"reason": '),
    ("truncated string", b'{"reason": "abc'),
    ("trailing garbage", b'{"reason": "x"} junk'),
    ("two documents", b'{"reason": "x"}{"reason": "y"}'),
    ("not JSON", b"{not json"),
    ("array at top level", b'[{"reason": "x"}]'),
    ("string at top level", b'"x"'),
    ("number at top level", b"1"),
    ("invalid UTF-8", b'{"reason": "\xff"}'),
    ("lone surrogate escape", b'{"reason": "\\ud800"}'),
    ("raw control character in a string", b'{"reason": "a\x00b"}'),
    ("BOM", b'\xef\xbb\xbf{"reason": "x"}'),
]
BODY_ROUTES = [("POST", "/admin/tasks/t/pause"), ("POST", "/admin/dlq/redrive"), ("PUT", "/admin/overrides/t"),
               ("POST", f"/admin/dlq/{uuid.UUID(int=1)}/discard")]


def call(c: TestClient[Any], method: str, path: str, body: bytes | None, headers: dict[str, str]) -> Any:
    """One request with a raw body (httpx would re-encode a ``json=``)."""
    return c.request(method, path, content=body, headers={**headers, **(JSON if body is not None else {})})


@pytest.fixture
def offline(db_url: str) -> Iterator[TestClient[Any]]:
    """The API on a Postgres nobody listens on: a request that reaches the database answers 503."""
    with make_client(db_url.replace(":5432", ":1"), prefix="t.") as c:
        yield c


def _token(method: str) -> dict[str, str]:
    return READ if method == "GET" else OPERATE


@pytest.mark.parametrize(("method", "path", "body", "field"), PARAMS, ids=[f"{m} {p[:60]}" for m, p, _, _ in PARAMS])
def test_hostile_parameters_are_422_naming_the_field(client: TestClient[Any], db_url: str, method: str, path: str,
                                                     body: bytes | None, field: str) -> None:
    assert_error(call(client, method, path, body, _token(method)), 422, "invalid", field)
    assert audit_rows(db_url) == [] and q(db_url, "SELECT count(*) FROM outbox.pauses") == [(0,)]


@pytest.mark.parametrize(("method", "path", "body", "field"), [*PARAMS, *BODY_NUL],
                         ids=[f"{m} {p[:60]} {b!r}"[:120] for m, p, b, _ in [*PARAMS, *BODY_NUL]])
def test_hostile_input_never_reaches_postgres(offline: TestClient[Any], method: str, path: str, body: bytes | None,
                                              field: str) -> None:
    assert_error(call(offline, method, path, body, _token(method)), 422, "invalid", field)


@pytest.mark.parametrize(("method", "path", "body", "field"), [*NUMBERS, *LIMITS],
                         ids=[f"{m} {p[:50]} {b!r}"[:100] for m, p, b, _ in [*NUMBERS, *LIMITS]])
def test_a_number_out_of_range_is_422_naming_the_field(client: TestClient[Any], db_url: str, method: str, path: str,
                                                       body: bytes | None, field: str) -> None:
    assert_error(call(client, method, path, body, _token(method)), 422, "invalid", field)
    assert audit_rows(db_url) == [] and q(db_url, "SELECT count(*) FROM outbox.tier_overrides") == [(0,)]


@pytest.mark.parametrize(("method", "path", "body", "field"), NUMBERS, ids=[f"{m} {p[:50]} {b!r}"[:100]
                                                                            for m, p, b, _ in NUMBERS])
def test_a_number_out_of_range_never_reaches_postgres(offline: TestClient[Any], method: str, path: str,
                                                      body: bytes | None, field: str) -> None:
    assert_error(call(offline, method, path, body, _token(method)), 422, "invalid", field)


@pytest.mark.parametrize("cursor", FORGED_CURSORS, ids=["huge", "bigint+1", "superscript two"])
def test_a_forged_dlq_cursor_is_422_not_500(client: TestClient[Any], cursor: str) -> None:
    assert_error(client.get(f"/admin/dlq?cursor={cursor}", headers=READ), 422, "invalid", "cursor")


def test_the_longest_override_is_accepted(client: TestClient[Any], db_url: str) -> None:
    r = call(client, "PUT", "/admin/overrides/t", b'{"tier": "high", "hours": 2160}', OPERATE)
    assert r.status_code == 200, r.text
    assert q(db_url, "SELECT task, tier FROM outbox.tier_overrides") == [("t", "high")]


@pytest.mark.parametrize(("method", "path", "body", "field"), BODY_NUL, ids=[f"{m} {p} {b!r}"[:100]
                                                                             for m, p, b, _ in BODY_NUL])
def test_nul_in_a_body_string_is_422_naming_the_field(client: TestClient[Any], db_url: str, method: str, path: str,
                                                      body: bytes, field: str) -> None:
    assert_error(call(client, method, path, body, OPERATE), 422, "invalid", field)
    assert audit_rows(db_url) == [] and q(db_url, "SELECT count(*) FROM outbox.pauses") == [(0,)]


@pytest.mark.parametrize(("method", "path"), BODY_ROUTES, ids=[f"{m} {p}" for m, p in BODY_ROUTES])
@pytest.mark.parametrize(("kind", "body"), MALFORMED, ids=[k for k, _ in MALFORMED])
def test_malformed_json_of_every_kind_is_400_malformed_json(offline: TestClient[Any], method: str, path: str,
                                                             kind: str, body: bytes) -> None:
    assert_error(call(offline, method, path, body, OPERATE), 400, "malformed_json")


@pytest.mark.parametrize(("method", "path"), [("POST", "/admin/dlq/redrive"), ("PUT", "/admin/overrides/t")])
@pytest.mark.parametrize("body", [b"", b"null", b"   "], ids=["empty", "null", "blank"])
def test_a_required_body_that_is_missing_is_400_malformed_json(offline: TestClient[Any], method: str, path: str,
                                                               body: bytes) -> None:
    assert_error(call(offline, method, path, body, OPERATE), 400, "malformed_json")


def test_an_optional_body_may_be_empty_or_null(client: TestClient[Any], db_url: str) -> None:
    assert call(client, "POST", "/admin/tasks/a/pause", b"", OPERATE).status_code == 200
    assert call(client, "POST", "/admin/tasks/b/pause", b"null", OPERATE).status_code == 200
    assert q(db_url, "SELECT name, reason FROM outbox.pauses ORDER BY name") == [("a", None), ("b", None)]


def test_auth_is_checked_before_the_input(client: TestClient[Any]) -> None:
    assert_error(client.get("/admin/jobs?task=%00"), 401, "unauthenticated")
    assert_error(call(client, "POST", "/admin/dlq/redrive", b'{"reason": ', READ), 403, "forbidden")


def test_what_only_looks_hostile_is_accepted(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url, task="sample.webhook")
    r = client.get("/admin/dlq", params={"task": "sample.webhook", "error_type": "RuntimeError"}, headers=READ)
    assert [i["job_id"] for i in r.json()["items"]] == [str(job)], r.text
    r = client.get("/admin/dlq", params={"task": "café.send"}, headers=READ)
    assert r.status_code == 200 and r.json()["items"] == [], r.text
    assert client.get("/admin/jobs", params={"task": "a b\\u0000 %00 ü 𝄞"}, headers=READ).status_code == 200
    assert client.get(f"/admin/jobs?task={'x' * 200}", headers=READ).status_code == 200  # exactly the maximum
    # A reason is free text: tabs and newlines are kept; an escaped backslash before u0000 is not a NUL.
    reason = 'line one\n\tline two \\u0000 𝄞'
    r = call(client, "POST", "/admin/tasks/t%20%C3%BC/pause", json.dumps({"reason": reason}).encode(), OPERATE)
    assert r.status_code == 200, r.text
    assert q(db_url, "SELECT name, reason FROM outbox.pauses") == [("t ü", reason)]
