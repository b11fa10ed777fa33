"""The dashboard through Litestar's test client on a real database: login, the session cookie, the security
headers, CSRF and scope checks, and that every screen renders what the ops functions return.

The browser tests (``test_ui_browser.py``) drive the same screens in Chromium against real processes.
"""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from litestar.testing import TestClient

from tests.api.test_api import OPERATE_SECRET, READ_SECRET, audit_rows, dead, make_client, q
from tierbox.api.ui.session import COOKIE

CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient[Any]]:
    """The API (and dashboard) on this test's own database."""
    with make_client(db_url) as c:
        yield c


def login(client: TestClient[Any], secret: str) -> str:
    """Log in with ``secret``; returns the CSRF token of the session."""
    r = client.post("/ui/login", data={"token": secret}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/tiers", r.text
    page = client.get("/ui/tiers")
    assert page.status_code == 200, page.text
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return found.group(1)


def test_login_sets_a_strict_httponly_cookie_without_the_secret(client: TestClient[Any]) -> None:
    assert client.get("/ui/tiers", follow_redirects=False).headers["location"] == "/ui/login"
    bad = client.post("/ui/login", data={"token": "nope"}, follow_redirects=False)
    assert bad.status_code == 303 and "error=" in bad.headers["location"] and COOKIE not in bad.cookies
    r = client.post("/ui/login", data={"token": OPERATE_SECRET}, follow_redirects=False)
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "samesite=strict" in cookie.lower() and "Path=/ui" in cookie, cookie
    assert "Secure" not in cookie  # plain HTTP here; over HTTPS the cookie is Secure (test below)
    assert OPERATE_SECRET not in cookie
    body, _, sig = r.cookies[COOKIE].rpartition(".")
    claims = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    # Claims of another configured token (grafana, read): only the signature tells them from a real session.
    claims = claims.replace(b'"alice"', b'"grafana"').replace(b'"operate"', b'"read"')
    forged = base64.urlsafe_b64encode(claims).rstrip(b"=").decode() + "." + sig
    client.cookies.clear()
    client.cookies.set(COOKIE, forged, domain="testserver.local", path="/ui")
    assert client.get("/ui/tiers", follow_redirects=False).status_code == 303
    client.cookies.clear()
    client.cookies.set(COOKIE, r.cookies[COOKIE], domain="testserver.local", path="/ui")
    assert client.get("/ui/tiers", follow_redirects=False).status_code == 200


def test_cookie_is_secure_over_https(db_url: str) -> None:
    with make_client(db_url) as c:
        c.base_url = c.base_url.copy_with(scheme="https")
        r = c.post("/ui/login", data={"token": OPERATE_SECRET}, follow_redirects=False)
        assert "Secure" in r.headers["set-cookie"]


def test_security_headers_on_pages_and_assets(client: TestClient[Any]) -> None:
    for path in ("/ui/login", "/ui/static/app.js", "/ui/static/htmx-2.0.4.min.js"):
        r = client.get(path)
        assert r.status_code == 200, path
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
        assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "same-origin"
    page = client.get("/ui/login").text
    assert "<script>" not in page and "onclick" not in page and "style=" not in page


def test_every_screen_renders(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    login(client, READ_SECRET)
    [(fingerprint,)] = q(db_url, "SELECT fingerprint FROM outbox.failure_groups")
    pages = ["/ui/tiers", "/ui/tiers/partial", "/ui/dlq", "/ui/dlq/partial", f"/ui/dlq/{job}", "/ui/jobs",
             f"/ui/jobs/{job}", "/ui/control", "/ui/jobs?status=dead&tier=normal", f"/ui/dlq/groups/{fingerprint}"]
    for path in pages:
        r = client.get(path)
        assert r.status_code == 200, (path, r.text[:1000])
    assert str(job) in client.get("/ui/dlq/partial").text
    assert "dead" in client.get(f"/ui/jobs/{job}").text


def test_search_by_id_and_idempotency_key(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    q(db_url, "UPDATE outbox.jobs SET idempotency_key = 'order-42' WHERE id = %s RETURNING id", job)
    # Where enqueue records a key since revision 0017 (the search looks it up there: ops.jobs.JOB_BY_KEY).
    q(db_url, "INSERT INTO outbox.idempotency_keys (key, job_id) VALUES ('order-42', %s) RETURNING job_id", job)
    login(client, READ_SECRET)
    for query in (str(job), "order-42"):
        r = client.get("/ui/jobs", params={"q": query}, follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == f"/ui/jobs/{job}", (query, r.text)
    assert "no job with id or idempotency key" in client.get("/ui/jobs", params={"key": "nope"}).text
    bad = client.get("/ui/jobs", params={"since": "yesterday"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "since"


def test_read_user_sees_no_controls_and_forged_posts_get_403(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    csrf = login(client, READ_SECRET)
    page = client.get(f"/ui/dlq/{job}").text
    assert 'data-action="redrive"' not in page and 'data-action="discard"' not in page
    assert 'data-action="pause-' not in client.get("/ui/tiers").text
    assert "pause-form" not in client.get("/ui/control").text
    r = client.post(f"/ui/dlq/{job}/redrive", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    r = client.post("/ui/control/pause", data={"csrf_token": csrf, "scope": "tier", "name": "high"})
    assert r.status_code == 403
    assert q(db_url, "SELECT count(*) FROM outbox.pauses")[0][0] == 0
    assert q(db_url, "SELECT redriven_at FROM outbox.dead_letters WHERE job_id = %s", job)[0][0] is None


def test_posts_without_or_with_a_wrong_csrf_token_are_refused(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    csrf = login(client, OPERATE_SECRET)
    for data in ({}, {"csrf_token": "x" + csrf}):
        r = client.post(f"/ui/dlq/{job}/discard", data=data, follow_redirects=False)
        assert r.status_code == 403 and "CSRF" in r.json()["error"]["message"]
    other_site = client.post(f"/ui/dlq/{job}/discard", data={"csrf_token": csrf},
                             headers={"Origin": "https://evil.example"}, follow_redirects=False)
    assert other_site.status_code == 403
    assert q(db_url, "SELECT discarded_at FROM outbox.dead_letters WHERE job_id = %s", job)[0][0] is None
    ok = client.post(f"/ui/dlq/{job}/discard", data={"csrf_token": csrf, "reason": "test"}, follow_redirects=False)
    assert ok.status_code == 303, ok.text
    assert [(r[0], r[2], r[5]) for r in audit_rows(db_url)] == [("alice", "discard", "ok")]


def test_actions_are_audited_with_the_operator(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    csrf = login(client, OPERATE_SECRET)
    r = client.post(f"/ui/dlq/{job}/redrive", data={"csrf_token": csrf, "reason": "fixed"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/ui/jobs/"), r.text
    new = uuid.UUID(r.headers["location"].split("/")[3].split("?")[0])
    assert q(db_url, "SELECT redrive_of FROM outbox.jobs WHERE id = %s", new)[0][0] == job
    again = client.post(f"/ui/dlq/{job}/redrive", data={"csrf_token": csrf}, follow_redirects=False)
    assert again.status_code == 303 and "error=" in again.headers["location"]
    for path, data in (("/ui/control/pause", {"scope": "tier", "name": "high"}),
                       ("/ui/control/resume", {"scope": "tier", "name": "high"}),
                       ("/ui/control/override", {"task": "sample.invoice", "tier": "bulk", "hours": "2"}),
                       ("/ui/control/override/clear", {"task": "sample.invoice"})):
        r = client.post(path, data={"csrf_token": csrf, **data}, follow_redirects=False)
        assert r.status_code == 303 and "error=" not in r.headers["location"], (path, r.text)
    bad = client.post("/ui/control/pause", data={"csrf_token": csrf, "scope": "tier", "name": "nope"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "name"
    assert [(r[0], r[2], r[5]) for r in audit_rows(db_url)] == [
        ("alice", "redrive", "ok"), ("alice", "redrive", "refused"), ("alice", "pause", "ok"),
        ("alice", "resume", "ok"), ("alice", "override_set", "ok"), ("alice", "override_clear", "ok")]
    assert "override_clear" in client.get("/ui/control").text


@pytest.mark.parametrize("hours", ["inf", "-inf", "nan", "1e400", "1e10", "2160.5", "0", "two"])
def test_an_override_form_with_hours_out_of_range_is_422_naming_hours(client: TestClient[Any], db_url: str,
                                                                      hours: str) -> None:
    # float() takes 'inf', 'nan' and '1e400'; each once reached timedelta() (OverflowError, ValueError: a 500).
    csrf = login(client, OPERATE_SECRET)
    r = client.post("/ui/control/override", data={"csrf_token": csrf, "task": "sample.invoice", "tier": "bulk",
                                                  "hours": hours}, follow_redirects=False)
    assert r.status_code == 422 and r.json()["error"]["field"] == "hours", r.text
    assert audit_rows(db_url) == [] and q(db_url, "SELECT count(*) FROM outbox.tier_overrides") == [(0,)]


def test_logout_ends_the_session(client: TestClient[Any]) -> None:
    csrf = login(client, READ_SECRET)
    r = client.post("/ui/logout", data={"csrf_token": csrf}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/ui/login"
    assert client.get("/ui/tiers", follow_redirects=False).status_code == 303


def test_insecure_dev_logs_in_without_a_token(db_url: str) -> None:
    with make_client(db_url, tokens=(), insecure_dev=True) as c:
        r = c.get("/ui/login", follow_redirects=False)
        assert r.status_code == 303 and COOKIE in r.cookies
        assert "insecure-dev" in c.get("/ui/tiers").text


def test_control_shows_the_schedulers_leader(db_url: str, service_urls: dict[str, str]) -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}."
    key = f"{prefix}tierbox:scheduler:leader"
    store = redis.Redis.from_url(service_urls["redis"])
    with make_client(db_url, prefix) as c:
        login(c, READ_SECRET)
        assert "none" in c.get("/ui/control").text.split('id="leader"')[1][:400]
        store.set(key, "host-a:4242:cafe", px=10_000)
        try:
            assert "host-a:4242:cafe" in c.get("/ui/control").text
        finally:
            store.delete(key)
