"""Pause/resume and tier overrides through the admin API: audited, validated, and moving the backlog."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from litestar.testing import TestClient

import outbox
from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.api.test_api import OPERATE, READ, TOKENS, assert_error, audit_rows, make_client, q
from tierbox.api.app import create_app
from tierbox.api.config import ApiConfig


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient[Any]]:
    with make_client(db_url) as c:
        yield c


def test_pause_and_resume_a_tier_is_idempotent_and_audited(client: TestClient[Any], db_url: str) -> None:
    r = client.post("/admin/tiers/bulk/pause", json={"reason": "provider migration"}, headers=OPERATE)
    assert r.status_code == 200 and r.json() == {"scope": "tier", "name": "bulk", "changed": True}
    assert client.post("/admin/tiers/bulk/pause", headers=OPERATE).json()["changed"] is False
    assert [(p["scope"], p["name"], p["paused_by"], p["reason"])
            for p in client.get("/admin/pauses", headers=READ).json()] == [("tier", "bulk", "alice",
                                                                             "provider migration")]
    assert client.post("/admin/tiers/bulk/resume", headers=OPERATE).json()["changed"] is True
    assert client.post("/admin/tiers/bulk/resume", headers=OPERATE).json()["changed"] is False
    assert q(db_url, "SELECT count(*) FROM outbox.pauses") == [(0,)]
    assert [(a[2], a[5]) for a in audit_rows(db_url)] == [("pause", "ok"), ("pause", "refused"),
                                                          ("resume", "ok"), ("resume", "not_found")]


def test_pause_needs_operate_and_a_known_tier(client: TestClient[Any]) -> None:
    assert_error(client.post("/admin/tiers/bulk/pause", headers=READ), 403, "forbidden")
    assert_error(client.post("/admin/tiers/nope/pause", headers=OPERATE), 422, "invalid", "tier")
    assert client.post("/admin/tasks/sample.export/pause", headers=OPERATE).json()["changed"] is True


def test_override_moves_waiting_backlog_and_expires_by_itself(client: TestClient[Any], db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        waiting = outbox.enqueue(conn, "sample.sync_calendar", args=[1])
    r = client.put("/admin/overrides/sample.sync_calendar", json={"tier": "high", "hours": 168,
                                                                  "reason": "calendar week"}, headers=OPERATE)
    assert r.status_code == 200, r.text
    assert r.json()["moved"] == 1 and r.json()["tier"] == "high"
    assert q(db_url, "SELECT j.tier, p.tier, p.weight FROM outbox.jobs j JOIN outbox.pending p ON p.job_id = j.id "
                     "WHERE j.id = %s", waiting) == [("high", "high", 8)]
    assert [o["tier"] for o in client.get("/admin/overrides", headers=READ).json()] == ["high"]
    with psycopg.connect(db_url) as conn:  # expired: ignored without any process acting
        conn.execute("UPDATE outbox.tier_overrides SET expires_at = now() - interval '1 second'")
    assert client.get("/admin/overrides", headers=READ).json() == []
    assert client.delete("/admin/overrides/sample.sync_calendar", headers=OPERATE).json()["changed"] is True
    assert [a[2] for a in audit_rows(db_url)] == ["override_set", "override_clear"]


def test_override_input_is_validated(client: TestClient[Any]) -> None:
    path = "/admin/overrides/sample.sync_calendar"
    assert_error(client.put(path, json={"tier": "nope", "hours": 1}, headers=OPERATE), 422, "invalid", "tier")
    assert_error(client.put(path, json={"tier": "high"}, headers=OPERATE), 422, "invalid", "until")
    assert_error(client.put(path, json={"tier": "high", "hours": 24 * 91}, headers=OPERATE), 422, "invalid",
                 "hours")
    assert_error(client.put(path, json={"tier": "high", "until": "2026-01-01T00:00:00"}, headers=OPERATE), 422,
                 "invalid", "until")


def test_cli_pause_resume_and_override_write_the_same_audit_rows(db_url: str) -> None:
    import os
    import subprocess
    import sys

    from tests.helpers import ROOT

    env = {**os.environ, "TIERBOX_DATABASE_URL": db_url}

    def tierbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "tierbox.cli", *args], env=env, cwd=ROOT, capture_output=True,
                              text=True, timeout=60)

    assert "tier bulk paused" in tierbox("pause", "tier", "bulk", "--reason", "cli").stdout
    assert "bulk" in tierbox("pauses").stdout
    assert tierbox("pause", "tier", "nope").returncode == 2
    assert "resumed" in tierbox("resume", "tier", "bulk").stdout
    assert "routed to high" in tierbox("override", "set", "sample.sync_calendar", "high", "--hours", "2").stdout
    assert "override cleared" in tierbox("override", "clear", "sample.sync_calendar").stdout
    rows = q(db_url, "SELECT actor_kind, action, result FROM outbox.admin_audit ORDER BY id")
    assert rows == [("os_user", "pause", "ok"), ("os_user", "resume", "ok"), ("os_user", "override_set", "ok"),
                    ("os_user", "override_clear", "ok")]


def test_breakers_are_listed_from_redis(client: TestClient[Any]) -> None:
    r = client.get("/admin/breakers", headers=READ)
    assert r.status_code == 200 and r.json() == {}  # this test's key prefix: no breaker has tripped


async def test_a_tripped_breaker_is_listed_open(db_url: str, service_urls: dict[str, str]) -> None:
    from outbox.registry import Task
    from tierbox.flow.gate import Gate, connect

    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings(redis_url=service_urls["redis"], queue_prefix=prefix)
    gate = Gate(settings, connect(settings), None)
    task = Task(name="charge", fn=print, tier="normal", breaker="stripe")
    try:
        for _ in range(5):  # the default policy's threshold
            await gate.record(task, ok=False)
        with make_client(db_url, prefix=prefix) as client:
            r = client.get("/admin/breakers", headers=READ)
        assert r.status_code == 200, r.text
        assert r.json()["stripe"]["state"] == "open" and r.json()["stripe"]["failures"] == 5
    finally:
        keys = [k async for k in gate.redis.scan_iter(match=f"{gate.prefix}:*")]
        if keys:
            await gate.redis.delete(*keys)
        await gate.redis.aclose()


def test_a_redis_outage_is_a_503_not_an_empty_list(db_url: str) -> None:
    settings = Settings(database_url=db_url, redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    with TestClient(create_app(settings, ApiConfig(tokens=TOKENS))) as client:
        r = client.get("/admin/breakers", headers=READ)
    assert_error(r, 503, "unavailable")
    assert "Redis" in r.json()["error"]["message"]
