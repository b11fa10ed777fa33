"""What the dashboard's screens show when there is something to show, server-rendered by the real app
(Litestar's test client) on a real database and Redis: pauses, overrides, an open breaker, rate and
concurrency limits and a schedule on Control; a breaching tier; a job's progress; a secret in a
traceback masked; group actions and task pauses through /ui; the signed notice banner.

``test_ui_pages.py`` covers login, cookies, headers and the scope and CSRF checks; these tests fill
the branches it only renders empty.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import psycopg
import pytest
import redis
from litestar.testing import TestClient

import outbox
import outbox.testing
from outbox.config import Settings
from outbox.flow import Schedule, parse_rate
from outbox.registry import Registry, Task, registry
from outbox.tiers import DEFAULT_TOPOLOGY
from tests import sample_tasks  # noqa: F401 - registers the sample tasks the screens list
from tests.api.test_api import OPERATE_SECRET, READ_SECRET, TOKENS, audit_rows, dead, q
from tests.ui.test_ui_pages import login
from tierbox.api.app import create_app
from tierbox.api.config import ApiConfig
from tierbox.flow.gate import Gate, connect
from tierbox.ops import control
from tierbox.scheduler.scheduler import Scheduler

#: A credential-looking assignment a handler's error quotes, and the value that must never be shown.
LEAK = "login to ledger-db failed: password=hunter2 api_key: sk-live-77"


def row(page: str, element_id: str) -> str:
    """The ``<tr id=...>`` row of ``page`` (fails the test when it is missing)."""
    found = re.search(rf'<tr id="{re.escape(element_id)}"[^>]*>.*?</tr>', page, re.S)
    assert found, f"no row {element_id!r} in:\n{page[:4000]}"
    return found.group(0)


def table(page: str, element_id: str) -> str:
    """The ``<table id=...>`` of ``page``."""
    found = re.search(rf'<table class="grid" id="{re.escape(element_id)}">.*?</table>', page, re.S)
    assert found, f"no table {element_id!r} in:\n{page[:4000]}"
    return found.group(0)


@pytest.fixture
def limited(db_url: str, service_urls: dict[str, str], tmp_path: Path) -> Settings:
    """Settings whose topology gives the bulk tier a rate limit of one start a minute."""
    topology = tmp_path / "topology.json"
    bulk = {**msgspec.to_builtins(DEFAULT_TOPOLOGY.tiers["bulk"]), "rate_limit": "1/m"}
    topology.write_text(json.dumps({"tiers": {"bulk": bulk}}))
    return Settings(database_url=db_url, redis_url=service_urls["redis"], topology_file=str(topology),
                    queue_prefix=f"t{uuid.uuid4().hex[:8]}.")


@pytest.fixture
def client(limited: Settings) -> Iterator[TestClient[Any]]:
    """The API and dashboard on ``limited``; the flow state the test left in Redis is deleted after."""
    with TestClient(create_app(limited, ApiConfig(tokens=TOKENS))) as c:
        yield c
    store = redis.Redis.from_url(limited.redis_url)
    try:
        for key in store.scan_iter(match=f"tierbox:{limited.queue_prefix}*"):
            store.delete(key)
    finally:
        store.close()


def act(client: TestClient[Any], csrf: str, path: str, **data: str) -> str:
    """POST a dashboard action; returns the page it redirects to, followed (with its notice)."""
    r = client.post(path, data={"csrf_token": csrf, **data}, follow_redirects=False)
    assert r.status_code == 303 and "error=" not in r.headers["location"], (path, r.headers.get("location"), r.text)
    page = client.get(r.headers["location"])
    assert page.status_code == 200, page.text
    return page.text


def _trip_breaker_and_spend_the_bulk_rate(settings: Settings) -> None:
    """Through the workers' own gate: record failures until sample.behind_breaker's breaker opens, and
    start one bulk job, which spends the tier's one start a minute."""
    behind, export = registry.get("sample.behind_breaker"), registry.get("sample.export")
    assert behind is not None and behind.breaker and export is not None

    async def go() -> None:
        client = connect(settings)
        try:
            gate = Gate(settings, client, None, policies=registry.breakers)
            for _ in range(gate.policy(behind.breaker or "").threshold):
                await gate.record(behind, ok=False)
            assert (await gate.admit(export, "bulk", {})).run
            refused = await gate.admit(export, "bulk", {})
            assert (refused.run, refused.reason) == (False, "rate_limited")
        finally:
            await client.aclose()

    asyncio.run(go())


def _store_a_schedule_that_ran(settings: Settings) -> tuple[str, uuid.UUID]:
    """A schedule synced and run once by the real scheduler; returns its name and the job it enqueued."""
    reg = Registry()
    reg.add(Task(name="ui.nightly_report", fn=lambda: None, tier="low", expires_s=3600.0,
                 schedule=Schedule(expr="*/5 * * * *", name="nightly-report")))
    scheduler = Scheduler(settings.database_url, redis_url=settings.redis_url, registry_=reg,
                          key_prefix=settings.queue_prefix)
    try:
        now = dt.datetime.now(dt.UTC)
        scheduler.tick(now)  # first sight: stored, no history replayed
        assert scheduler.tick(now + dt.timedelta(minutes=11)) == 1
    finally:
        scheduler.release()
    [(job_id,)] = q(settings.database_url, "SELECT last_job_id FROM outbox.schedules WHERE name = 'nightly-report'")
    return "nightly-report", job_id


def test_control_shows_pauses_overrides_breakers_limits_and_schedules(client: TestClient[Any],
                                                                      limited: Settings) -> None:
    csrf = login(client, OPERATE_SECRET)
    # A task pause through /ui (the tier one is covered in test_ui_pages and the browser test).
    page = act(client, csrf, "/ui/control/pause", scope="task", name="sample.invoice", reason="bad invoices")
    assert "task sample.invoice paused" in page
    act(client, csrf, "/ui/control/pause", scope="tier", name="high", reason="deploy")
    act(client, csrf, "/ui/control/override", task="sample.export", tier="low", hours="2", reason="month end")
    _trip_breaker_and_spend_the_bulk_rate(limited)
    name, last_job = _store_a_schedule_that_ran(limited)

    page = client.get("/ui/control").text
    pauses = table(page, "pauses")
    assert "sample.invoice" in pauses and "bad invoices" in pauses and "high" in pauses and "deploy" in pauses
    assert pauses.count('action="/ui/control/resume"') == 2  # each pause has its Resume
    overrides = table(page, "overrides")
    assert "sample.export" in overrides and "<td>low</td>" in overrides and "month end" in overrides
    breakers = table(page, "breakers")
    assert "flaky-downstream" in breakers and 'class="breach"' in breakers and "<td>open</td>" in breakers

    # Rate limits: the topology's tier limit, spent for about a minute, and the tasks' declared ones.
    bulk = row(page, "limit-tier-bulk")
    assert "1/m" in bulk and 'class="warn"' in bulk
    wait = re.search(r"in ([\d.]+) (s|min)", bulk)
    assert wait and 50 <= float(wait.group(1)) * (60 if wait.group(2) == "min" else 1) <= 60, bulk
    rated = row(page, "limit-task-sample.rated")
    assert "5/s" in rated and "<td>normal</td>" in rated and "now" in rated
    assert 'id="limits-no-app"' not in page  # this process registered the sample tasks

    schedules = table(page, "schedules")
    assert name in schedules and "*/5 * * * *" in schedules and f'href="/ui/jobs/{last_job}"' in schedules

    tiers = client.get("/ui/tiers").text
    assert "Overrides in force" in tiers and "<code>sample.export</code> → low" in tiers
    assert "paused" in row(tiers, "tier-high") and "paused" not in row(tiers, "tier-normal")
    assert [(a[2], a[5]) for a in audit_rows(limited.database_url)] == [
        ("pause", "ok"), ("pause", "ok"), ("override_set", "ok")]


def test_limits_state_counts_concurrency_held_and_says_when_redis_is_down(limited: Settings) -> None:
    one_at_a_time = Task(name="ui.one_at_a_time", fn=lambda: None, tier="normal", concurrency=1)
    per_org = Task(name="ui.per_org", fn=lambda: None, tier="normal", rate_limit=parse_rate("2/s"),
                   rate_key="org")

    async def go() -> tuple[list[control.RateLimitRow], str | None, list[control.RateLimitRow], str | None]:
        client = connect(limited)
        try:
            decision = await Gate(limited, client, None).admit(one_at_a_time, "normal", {})
            assert decision.run and decision.token is not None
            rows, error = await control.rate_limits(limited, client, [one_at_a_time, per_org])
            down = msgspec.structs.replace(limited, redis_url="redis://127.0.0.1:1/0")
            rows_down, error_down = await control.rate_limits(down, None, [one_at_a_time, per_org])
            return rows, error, rows_down, error_down
        finally:
            await client.aclose()

    rows, error, rows_down, error_down = asyncio.run(go())
    assert error is None
    by_name = {(r.scope, r.name): r for r in rows}
    assert list(by_name) == [("tier", "bulk"), ("task", "ui.one_at_a_time"), ("task", "ui.per_org")]
    assert (by_name["task", "ui.one_at_a_time"].concurrency, by_name["task", "ui.one_at_a_time"].held) == (1, 1)
    keyed = by_name["task", "ui.per_org"]
    assert (keyed.rate, keyed.rate_key, keyed.next_start_in_s) == ("2/s", "org", None)  # per-key buckets: not read
    assert by_name["tier", "bulk"].next_start_in_s == 0.0  # nothing started in bulk here
    # Redis down: the configured limits are still listed, their state unknown, and the reason given.
    assert error_down and "Redis did not answer" in error_down
    assert [(r.name, r.held, r.next_start_in_s) for r in rows_down] == [
        ("bulk", None, None), ("ui.one_at_a_time", None, None), ("ui.per_org", None, None)]


def test_a_breaching_tier_is_marked(client: TestClient[Any], limited: Settings) -> None:
    with psycopg.connect(limited.database_url) as conn:  # due ten minutes ago; no relay runs here
        outbox.enqueue(conn, "sample.effect", run_at=dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    login(client, READ_SECRET)
    page = client.get("/ui/tiers/partial").text
    high = row(page, "tier-high")
    assert 'class="breach"' in high and "SLO breached" in high and "10 min" in high
    normal = row(page, "tier-normal")
    assert 'class="breach"' not in normal and "SLO breached" not in normal


def test_a_job_page_shows_its_progress(client: TestClient[Any], limited: Settings) -> None:
    real = registry.get("sample.progress")
    assert real is not None

    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        ctx.progress(0.4, "step 2 of 5", {"step": 2})

    reg = Registry()
    reg.add(msgspec.structs.replace(real, fn=handler, takes_context=True))
    with psycopg.connect(limited.database_url) as conn:
        job = outbox.enqueue(conn, "sample.progress")
        [ran] = outbox.testing.drain(conn, registry_=reg, jobs=[job])
    assert ran.status == "succeeded"
    login(client, READ_SECRET)
    page = client.get(f"/ui/jobs/{job}").text
    progress = re.search(r'<dd id="job-progress">(.*?)</dd>', page, re.S)
    assert progress and "40 %" in progress.group(1) and "step 2 of 5" in progress.group(1), page[:3000]
    assert "<td>progress</td>" in table(page, "timeline")


def _dies_leaking(*_: Any, **__: Any) -> None:
    raise ConnectionError(LEAK)


def test_a_secret_in_an_error_or_traceback_is_masked_on_every_screen(client: TestClient[Any],
                                                                     limited: Settings) -> None:
    real = registry.get("sample.needs_flag")  # max_retries=0: one failure dead-letters it
    assert real is not None and real.max_retries == 0
    reg = Registry()
    reg.add(msgspec.structs.replace(real, fn=_dies_leaking, takes_context=False))
    with psycopg.connect(limited.database_url) as conn:
        job = outbox.enqueue(conn, "sample.needs_flag")
        [ran] = outbox.testing.drain(conn, registry_=reg, jobs=[job])
    assert ran.status == "dead"
    [(traceback,)] = q(limited.database_url, "SELECT traceback FROM outbox.attempts WHERE job_id = %s", job)
    assert "hunter2" in traceback  # stored as raised: only the screens mask it
    [(fingerprint,)] = q(limited.database_url, "SELECT fingerprint FROM outbox.failure_groups")
    login(client, READ_SECRET)
    for path in (f"/ui/jobs/{job}", f"/ui/dlq/{job}", "/ui/dlq", "/ui/dlq/partial", f"/ui/dlq/groups/{fingerprint}",
                 "/ui/jobs?status=dead"):
        page = client.get(path)
        assert page.status_code == 200, (path, page.text[:500])
        assert "hunter2" not in page.text and "sk-live-77" not in page.text, path
    job_page = client.get(f"/ui/jobs/{job}").text
    assert "password=***" in job_page and "api_key: ***" in job_page and "Traceback" in job_page


def test_group_ignore_and_discard_through_the_dashboard(client: TestClient[Any], limited: Settings) -> None:
    jobs = dead(limited.database_url, 2)
    [(fingerprint,)] = q(limited.database_url, "SELECT fingerprint FROM outbox.failure_groups")
    csrf = login(client, OPERATE_SECRET)
    page = act(client, csrf, f"/ui/dlq/groups/{fingerprint}/status", status="ignored", note="known, harmless")
    assert "open -&gt; ignored" in page
    assert q(limited.database_url, "SELECT status, status_by, status_note FROM outbox.failure_groups") == [
        ("ignored", "alice", "known, harmless")]
    page = act(client, csrf, f"/ui/dlq/groups/{fingerprint}/discard", reason="test data")
    assert "discarded 2 dead letter(s)" in page
    discarded = q(limited.database_url, "SELECT job_id FROM outbox.dead_letters WHERE discarded_at IS NOT NULL")
    assert sorted(r[0] for r in discarded) == sorted(jobs)
    page = act(client, csrf, f"/ui/dlq/groups/{fingerprint}/status", status="open")
    assert "ignored -&gt; open" in page
    assert [(a[2], a[5]) for a in audit_rows(limited.database_url)] == [
        ("group_status", "ok"), ("discard_group", "ok"), ("group_status", "ok")]


def test_the_notice_banner_shows_only_what_this_server_signed_for_this_session(client: TestClient[Any],
                                                                                 limited: Settings) -> None:
    csrf = login(client, OPERATE_SECRET)
    r = client.post("/ui/control/pause", data={"csrf_token": csrf, "scope": "tier", "name": "low"},
                    follow_redirects=False)
    location = r.headers["location"]
    query = parse_qs(urlsplit(location).query)
    assert query["done"] == ["tier low paused"] and query["n"], location
    assert '<p class="notice" role="status">tier low paused</p>' in client.get(location).text
    # A crafted link: free text, a wrong signature, or another notice under this one's signature.
    crafted = [{"done": "Call 555-0100 to restore service"}, {"error": "Session expired, log in at evil.example"},
               {"done": "tier low paused", "n": "x" * 22}, {"done": "all dead letters redriven", "n": query["n"][0]},
               {"error": "tier low paused", "n": query["n"][0]}]
    for params in crafted:
        page = client.get("/ui/control", params=params).text
        assert 'class="notice"' not in page and 'class="problem"' not in page, params
    # The same signed link in another operator's session shows nothing either (keyed by its CSRF token).
    with TestClient(create_app(limited, ApiConfig(tokens=TOKENS))) as other:
        login(other, OPERATE_SECRET)
        assert 'class="notice"' not in other.get(location).text
    # The login page's error is a code from a fixed set.
    client.cookies.clear()
    bad = client.post("/ui/login", data={"token": "nope"}, follow_redirects=False)
    assert bad.headers["location"] == "/ui/login?error=token"
    assert "unknown or revoked token" in client.get(bad.headers["location"]).text
    assert "evil" not in client.get("/ui/login", params={"error": "evil text"}).text
