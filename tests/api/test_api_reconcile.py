"""``POST /admin/reconcile`` against real Postgres, RabbitMQ and Redis: operate scope, dry run and real, audited."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import aio_pika
import msgspec
import psycopg
import pytest
from litestar.testing import TestClient

import outbox
from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.api.test_api import OPERATE, READ, TOKENS, assert_error, q
from tierbox.api.app import create_app
from tierbox.api.config import ApiConfig
from tierbox.relay import Relay


@pytest.fixture
def quick(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, reconcile_grace_s=0.0)


@pytest.fixture
def client(quick: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(quick, ApiConfig(tokens=TOKENS))) as c:
        yield c


async def purged_jobs(settings: Settings, amqp: aio_pika.abc.AbstractConnection, n: int) -> list[str]:
    """``n`` CRITICAL jobs published, then their messages purged from the test's own queue."""
    with psycopg.connect(settings.database_url) as conn:
        jobs = [str(outbox.enqueue(conn, "sample.critical_effect")) for _ in range(n)]
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == n
    finally:
        await relay.close()
    channel = await amqp.channel()
    assert (await (await channel.get_queue(settings.queue_name("critical"), ensure=False)).purge()).message_count == n
    await channel.close()
    return jobs


async def test_reconcile_dry_run_then_real_is_audited(client: TestClient[Any], quick: Settings,
                                                      amqp: aio_pika.abc.AbstractConnection) -> None:
    jobs = await purged_jobs(quick, amqp, 3)
    assert_error(client.post("/admin/reconcile", json={"tier": "critical"}, headers=READ), 403, "forbidden")
    assert_error(client.post("/admin/reconcile", json={"tier": "nope"}, headers=OPERATE), 422, "invalid", "tier")
    r = client.post("/admin/reconcile", json={"tier": "critical", "dry_run": True, "force": True,
                                              "reason": "purged by mistake"}, headers=OPERATE)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dry_run"] is True and body["republished"] == 0
    [tier] = body["tiers"]
    assert (tier["tier"], tier["owed"], tier["ready"], tier["shortfall"]) == ("critical", 3, 0, 3)
    assert sorted(tier["republished"]) == sorted(jobs)  # would republish
    assert q(quick.database_url, "SELECT count(*) FROM outbox.republished") == [(0,)]
    # Not forced: the relay has run no round yet, so no job was missing twice.
    r = client.post("/admin/reconcile", json={"tier": "critical"}, headers=OPERATE)
    assert r.status_code == 200 and r.json()["republished"] == 0
    r = client.post("/admin/reconcile", json={"tier": "critical", "reason": "second look"}, headers=OPERATE)
    assert r.status_code == 200 and r.json()["republished"] == 3, r.text
    assert sorted(map(str, (j for (j,) in q(quick.database_url, "SELECT job_id FROM outbox.republished")))) == \
        sorted(jobs)
    assert q(quick.database_url, "SELECT DISTINCT reason, actor FROM outbox.republished") == [("manual", "alice")]
    audit = q(quick.database_url, "SELECT actor, action, result, cardinality(job_ids), detail->>'dry_run', "
                                  "detail->>'reason' FROM outbox.admin_audit ORDER BY id")
    assert audit == [("alice", "reconcile", "ok", 0, "true", "purged by mistake"),
                     ("alice", "reconcile", "ok", 0, "false", None),
                     ("alice", "reconcile", "ok", 3, "false", "second look")]
    assert q(quick.database_url, "SELECT count(*) FROM outbox.pending") == [(3,)]  # the relay publishes them again


async def test_reconcile_while_another_round_holds_the_lock_is_409_and_audited_as_refused(
        client: TestClient[Any], quick: Settings) -> None:
    from tierbox.relay.reconcile import Reconciler

    holder = await Reconciler.connect(quick, actor="test-relay")
    try:
        assert holder.db is not None
        async with holder.db.transaction():
            await holder.round(holder.db, ["critical"])  # holds the advisory lock until this transaction ends
            r = client.post("/admin/reconcile", json={"tier": "critical", "force": True}, headers=OPERATE)
    finally:
        await holder.close()
    assert_error(r, 409, "conflict")
    assert "another relay's round holds the lock" in r.json()["error"]["message"]
    assert q(quick.database_url, "SELECT actor, action, result FROM outbox.admin_audit") == [
        ("alice", "reconcile", "refused")]
    assert q(quick.database_url, "SELECT count(*) FROM outbox.republished") == [(0,)]


async def test_reconcile_without_redis_is_503_and_audited_as_refused(
        quick: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    """Without the pools' in-flight sets every buffered message would look lost: no round, never a blind one."""
    await purged_jobs(quick, amqp, 2)
    blind = msgspec.structs.replace(quick, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(blind, ApiConfig(tokens=TOKENS))) as c:
        r = c.post("/admin/reconcile", json={"tier": "critical", "force": True}, headers=OPERATE)
    assert_error(r, 503, "unavailable")
    assert "Redis unreachable" in r.json()["error"]["message"]
    assert q(quick.database_url, "SELECT actor, action, result FROM outbox.admin_audit") == [
        ("alice", "reconcile", "refused")]
    assert q(quick.database_url, "SELECT count(*) FROM outbox.republished") == [(0,)]
