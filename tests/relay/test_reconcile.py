"""Reconciliation against real Postgres, RabbitMQ and Redis: a job survives RabbitMQ losing its message.

The first tests drive a :class:`Reconciler` in the test's process round by round; the last ones run
real relay and worker processes and purge or delete the test's own queues under them.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import msgspec
import psycopg
import pytest

import outbox
from outbox import _transitions as transitions
from outbox._sql import run_async
from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import Proc
from tests.system import System
from tierbox.relay import Relay
from tierbox.relay.reconcile import Reconciler
from tierbox.workers import inflight


def enqueue(settings: Settings, task: str, n: int, *args: Any) -> list[uuid.UUID]:
    with psycopg.connect(settings.database_url) as conn:
        return [outbox.enqueue(conn, task, args=list(args)) for _ in range(n)]


def q(settings: Settings, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute(sql, params).fetchall()


def republished(settings: Settings) -> list[uuid.UUID]:
    return [r[0] for r in q(settings, "SELECT job_id FROM outbox.republished ORDER BY id")]


async def ready(amqp: aio_pika.abc.AbstractConnection, queue: str) -> int:
    channel = await amqp.channel()
    try:
        return int((await channel.declare_queue(queue, passive=True)).declaration_result.message_count or 0)
    finally:
        await channel.close()


async def purge(amqp: aio_pika.abc.AbstractConnection, queue: str) -> int:
    """AMQP queue.purge on one of this test's queues; returns the messages it dropped."""
    channel = await amqp.channel()
    try:
        result = await (await channel.get_queue(queue, ensure=False)).purge()
        return int(result.message_count or 0)
    finally:
        await channel.close()


async def publish_all(settings: Settings) -> int:
    relay = await Relay.connect(settings)
    try:
        return await relay.drain()
    finally:
        await relay.close()


@pytest.fixture
def quick(settings: Settings) -> Settings:
    """Reconciliation with no grace: a job published a moment ago may be republished."""
    return msgspec.structs.replace(settings, reconcile_interval_s=1.0, reconcile_grace_s=0.0)


@pytest.fixture
async def reconciler(quick: Settings) -> AsyncIterator[Reconciler]:
    r = await Reconciler.connect(quick, actor="test-relay")
    try:
        yield r
    finally:
        await r.close()


async def test_a_purged_job_is_republished_after_two_rounds_then_published_again(
        quick: Settings, reconciler: Reconciler, amqp: aio_pika.abc.AbstractConnection) -> None:
    jobs = enqueue(quick, "sample.critical_effect", 5)
    assert await publish_all(quick) == 5
    assert await reconciler.run_once() == 0  # nothing missing: the queue holds all five
    assert await purge(amqp, quick.queue_name("critical")) == 5
    assert await reconciler.run_once() == 0  # first round: candidates only
    assert republished(quick) == []
    assert await reconciler.run_once() == 5  # second round: still missing, republished
    assert sorted(republished(quick)) == sorted(jobs)
    assert q(quick, "SELECT DISTINCT reason, actor, tier FROM outbox.republished") == [
        ("reconcile", "test-relay", "critical")]
    assert q(quick, "SELECT count(*) FROM outbox.pending") == [(5,)]
    assert await reconciler.run_once() == 0  # pending again: on its way, not owed
    assert await publish_all(quick) == 5
    assert await ready(amqp, quick.queue_name("critical")) == 5
    assert await reconciler.run_once() == 0  # in the queue again: nothing missing
    assert len(republished(quick)) == 5
    assert q(quick, "SELECT DISTINCT status FROM outbox.jobs") == [("published",)]
    events = q(quick, "SELECT event, detail->>'reason' FROM outbox.job_timeline WHERE job_id = %s "
                      "ORDER BY at, seq", jobs[0])
    assert ("republished", "reconcile") in events
    health = q(quick, "SELECT republished_1h, published, published_oldest_age_s FROM outbox.tier_health "
                      "WHERE tier = 'critical'")
    assert health[0][0] == 5 and health[0][1] == 5 and health[0][2] is not None


async def test_the_grace_keeps_a_recently_published_job(
        settings: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    slow = msgspec.structs.replace(settings, reconcile_grace_s=60.0)
    enqueue(slow, "sample.critical_effect", 3)
    await publish_all(slow)
    await purge(amqp, slow.queue_name("critical"))
    r = await Reconciler.connect(slow)
    try:
        assert r.db is not None
        for _ in range(2):
            async with r.db.transaction():
                found = await r.round(r.db, ["critical"])
            [tier] = found.tiers
            assert (tier.owed, tier.ready, tier.shortfall, tier.candidates, tier.republished) == (3, 0, 3, [], [])
    finally:
        await r.close()
    assert republished(slow) == []


async def test_jobs_a_pool_holds_are_not_missing(
        quick: Settings, reconciler: Reconciler, amqp: aio_pika.abc.AbstractConnection) -> None:
    """Two of five messages sit in a pool's buffer (its Redis set says so); three were purged."""
    jobs = enqueue(quick, "sample.critical_effect", 5)
    await publish_all(quick)
    await purge(amqp, quick.queue_name("critical"))
    held = inflight.InflightReporter(quick, "test-pool", ["critical"])
    for job in jobs[:2]:
        held.hold("critical", type("Message", (), {"message_id": str(job)})())
    await held.publish()
    try:
        assert reconciler.db is not None
        async with reconciler.db.transaction():
            found = await reconciler.round(reconciler.db, ["critical"])
        assert (found.tiers[0].owed, found.tiers[0].held, found.tiers[0].shortfall) == (5, 2, 3)
        assert sorted(found.tiers[0].candidates) == sorted(jobs[2:])
        await held.publish()  # the pool's next beat
        assert await reconciler.run_once() == 3
        assert sorted(republished(quick)) == sorted(jobs[2:])
    finally:
        await held.close()


async def test_force_skips_the_two_rounds_and_a_dry_run_writes_nothing(
        quick: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    jobs = enqueue(quick, "sample.critical_effect", 2)
    await publish_all(quick)
    await purge(amqp, quick.queue_name("critical"))
    r = await Reconciler.connect(quick, actor="alice")
    r.reason = "manual"
    try:
        assert r.db is not None
        async with r.db.transaction():
            dry = await r.round(r.db, ["critical"], dry_run=True, force=True)
        assert sorted(dry.tiers[0].republished) == sorted(jobs) and dry.republished == 0
        assert republished(quick) == [] and q(quick, "SELECT count(*) FROM outbox.pending") == [(0,)]
        async with r.db.transaction():
            done = await r.round(r.db, ["critical"], force=True)
        assert done.republished == 2
    finally:
        await r.close()
    assert q(quick, "SELECT DISTINCT reason, actor FROM outbox.republished") == [("manual", "alice")]


async def test_a_round_is_skipped_without_redis_or_while_another_holds_the_lock(
        quick: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    enqueue(quick, "sample.critical_effect", 2)
    await publish_all(quick)
    await purge(amqp, quick.queue_name("critical"))
    blind = await Reconciler.connect(msgspec.structs.replace(quick, redis_url="redis://127.0.0.1:1/0"))
    try:
        assert blind.db is not None
        for _ in range(2):
            async with blind.db.transaction():
                found = await blind.round(blind.db, force=True)
            assert found.skipped is not None and "Redis unreachable" in found.skipped and found.tiers == []
    finally:
        await blind.close()
    first = await Reconciler.connect(quick)
    second = await Reconciler.connect(quick)
    try:
        assert first.db is not None and second.db is not None
        async with first.db.transaction():
            await first.round(first.db, ["critical"])  # holds the lock until this transaction ends
            async with second.db.transaction():
                other = await second.round(second.db, force=True)
            assert other.skipped == "another relay's round holds the lock"
    finally:
        await first.close()
        await second.close()
    assert republished(quick) == []


async def test_a_duplicate_of_a_republished_job_that_ran_is_absorbed(
        quick: Settings, system_quick: System) -> None:
    """The message was not lost after all: the job runs from it, then the republished copy arrives."""
    [job] = enqueue(quick, "sample.critical_effect", 1)
    await publish_all(quick)
    async with await psycopg.AsyncConnection.connect(quick.psycopg_url) as conn:
        rows = await run_async(conn, transitions.REPUBLISH, {"ids": [job], "tier": "critical", "grace_s": 0,
                                                             "reason": "manual", "actor": "test"})
    assert [r.job_id for r in rows] == [job]
    assert await publish_all(quick) == 1  # the second copy
    worker = system_quick.worker("--pool", "urgent", "--burst")
    assert worker.wait(60) == 0
    system_quick.wait_status(job, "succeeded")
    out = worker.output()
    assert "skipped_finished=1" in out or "skipped_running=1" in out, out[-2000:]
    assert system_quick.runs(job) == 1 and system_quick.outcomes(job) == ["succeeded"]


# --- Real relay and worker processes --------------------------------------------------------------


@pytest.fixture
def system_quick(quick: Settings, procs: list[Proc], tmp_path: Path) -> System:
    """Processes reconciling every second with a 1 s grace."""
    return System(msgspec.structs.replace(quick, reconcile_grace_s=1.0), procs, tmp_path)


def wait_published(system: System, jobs: list[uuid.UUID]) -> None:
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'published' AND id = ANY(%s)",
                                 jobs)[0][0] == len(jobs), what="all published")


def run_once_each(system: System, jobs: list[uuid.UUID]) -> None:
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded' AND id = ANY(%s)",
                                 jobs)[0][0] == len(jobs), timeout=60, what="all succeeded")
    runs = dict(system.q("SELECT job_id, count(*) FROM public.test_runs WHERE job_id = ANY(%s) GROUP BY job_id", jobs))
    assert runs == dict.fromkeys(jobs, 1)


async def test_purged_with_no_worker_then_every_job_runs_once(
        system_quick: System, amqp: aio_pika.abc.AbstractConnection) -> None:
    system = system_quick
    relay = system.relay()
    jobs = [system.enqueue("sample.critical_effect", f"purged {i}") for i in range(20)]
    wait_published(system, jobs)
    queue = system.settings.queue_name("critical")
    assert await purge(amqp, queue) == 20
    purged_at = time.monotonic()
    system.wait(lambda: len(republished(system.settings)) == 20, timeout=30, what="20 republished")
    recovered_s = time.monotonic() - purged_at
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.pending")[0][0] == 0, what="published again")
    assert sorted(republished(system.settings)) == sorted(jobs)
    system.worker("--pool", "urgent")
    run_once_each(system, jobs)
    assert "relay.republished" in relay.output()
    print(f"recovery after purge: {recovered_s:.1f} s (grace 1 s, interval 1 s)")


async def test_purge_while_consuming_republishes_only_the_lost(
        system_quick: System, amqp: aio_pika.abc.AbstractConnection) -> None:
    """A worker runs 8 and buffers 1 (urgent pool, HIGH tier); the rest are purged from the queue."""
    system = system_quick
    system.relay()
    jobs = [system.enqueue("sample.sleep", 1.5, f"slow {i}") for i in range(30)]
    wait_published(system, jobs)
    system.worker("--pool", "urgent")
    queue = system.settings.queue_name("high")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_runs")[0][0] >= 8, what="slots busy")
    purged = await purge(amqp, queue)
    started = {r[0] for r in system.q("SELECT job_id FROM public.test_runs")}
    assert 0 < purged <= 30 - 8
    run_once_each(system, jobs)
    again = republished(system.settings)
    assert len(again) == purged and len(set(again)) == purged
    assert not set(again) & started


async def test_a_deleted_queue_is_declared_again_and_its_jobs_run_once(
        system_quick: System, amqp: aio_pika.abc.AbstractConnection) -> None:
    system = system_quick
    system.relay()
    jobs = [system.enqueue("sample.critical_effect", f"deleted {i}") for i in range(10)]
    wait_published(system, jobs)
    queue = system.settings.queue_name("critical")
    channel = await amqp.channel()
    await channel.queue_delete(queue)
    await channel.close()
    system.wait(lambda: len(republished(system.settings)) == 10, timeout=30, what="10 republished")
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.pending")[0][0] == 0, what="published again")
    assert await ready(amqp, queue) == 10  # declared again (bound: the relay's publishes were routed)
    system.worker("--pool", "urgent")
    run_once_each(system, jobs)


async def test_delete_while_consuming_republishes_only_the_lost(
        system_quick: System, amqp: aio_pika.abc.AbstractConnection) -> None:
    """As the purge test, but the queue is deleted under the consuming worker (the broker cancels its
    consumer): the worker runs 8 and buffers 1. Lost are the messages still in the queue and the buffered
    one (the pool reconnects on the cancel, so its unacked delivery goes back to a queue that is gone).
    Only those are republished, none that had started, and every job runs once after the queue is
    declared again."""
    system = system_quick
    system.relay()
    jobs = [system.enqueue("sample.sleep", 1.5, f"deleted under a worker {i}") for i in range(30)]
    wait_published(system, jobs)
    worker = system.worker("--pool", "urgent")
    queue = system.settings.queue_name("high")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_runs")[0][0] >= 8, what="slots busy")
    channel = await amqp.channel()
    deleted = int((await channel.queue_delete(queue)).message_count or 0)
    await channel.close()
    started = {r[0] for r in system.q("SELECT job_id FROM public.test_runs")}
    assert 0 < deleted <= 30 - 8
    run_once_each(system, jobs)
    again = republished(system.settings)
    assert len(set(again)) == len(again), "a job republished twice"
    assert deleted <= len(again) <= deleted + 1  # the queue's messages, and the buffered one unless it started
    assert set(again) <= set(jobs) - started  # none that had started when the queue was deleted
    out = worker.output()
    assert "worker.consumer_cancelled" in out or "worker.consumer_missing" in out, out[-2000:]


async def test_one_unreadable_queue_leaves_only_its_tier_out_of_the_round(
        quick: Settings, reconciler: Reconciler, amqp: aio_pika.abc.AbstractConnection,
        caplog: pytest.LogCaptureFixture) -> None:
    """A queue the broker refuses to declare (here: another connection's exclusive queue of that name, as
    unreadable as a classic queue whose home node is down) is skipped and logged; the other tiers go on."""
    jobs = enqueue(quick, "sample.critical_effect", 3)
    assert await publish_all(quick) == 3
    assert await purge(amqp, quick.queue_name("critical")) == 3
    owner = await aio_pika.connect(quick.amqp_url)
    try:
        channel = await owner.channel()
        await channel.queue_delete(quick.queue_name("high"))
        await channel.declare_queue(quick.queue_name("high"), exclusive=True)  # RESOURCE_LOCKED to all others
        assert reconciler.db is not None
        with caplog.at_level("WARNING", logger="tierbox.relay"):
            async with reconciler.db.transaction():
                done = await reconciler.round(reconciler.db, force=True)
    finally:
        await owner.close()
    assert done.skipped is None
    assert set(done.skipped_tiers) == {"high"} and "RESOURCE_LOCKED" in done.skipped_tiers["high"].upper()
    assert "high" not in {t.tier for t in done.tiers}
    assert {t.tier for t in done.tiers} == set(quick.topology.tiers) - {"high"}
    assert sorted(republished(quick)) == sorted(jobs)  # critical was reconciled all the same
    assert any("relay.reconcile_tier_skipped" in r.getMessage() and "high" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]


#: Jobs of the healthy-backlog test and the draining pool's slots; docs/reliability.md quotes runs with
#: 20,000 (2 slots) and 100,000 (RECONCILE_TEST_BACKLOG=100000 RECONCILE_TEST_SLOTS=8).
BACKLOG = int(os.environ.get("RECONCILE_TEST_BACKLOG", "3000"))
SLOTS = os.environ.get("RECONCILE_TEST_SLOTS", "2")
#: Seconds the backlog may take to publish and to drain: generous for 2 cores at about 100 jobs/s.
BUDGET_S = max(120.0, BACKLOG / 100)


@pytest.mark.timeout(int(2 * BUDGET_S + 60))
def test_a_healthy_bulk_backlog_draining_republishes_nothing(system_quick: System) -> None:
    """Thousands of BULK jobs drain through a small pool while the relay reconciles every second with a 1 s
    grace: the messages move from the queue into the pool's buffer and start, and none is taken for lost."""
    system = system_quick
    relay = system.relay()
    with psycopg.connect(system.settings.database_url) as conn:
        for start in range(0, BACKLOG, 5000):
            outbox.enqueue_many(conn, [outbox.job("sample.export", args=[i])
                                       for i in range(start, min(start + 5000, BACKLOG))])
            conn.commit()
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.pending")[0][0] == 0, timeout=BUDGET_S,
                what="backlog published")
    began = time.monotonic()
    system.worker("--pool", "deferred", "--concurrency", SLOTS)
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'")[0][0] == BACKLOG,
                timeout=BUDGET_S, what="backlog drained")
    drained_s = time.monotonic() - began
    rounds = relay.output().count("relay.reconcile_shortfall")
    assert republished(system.settings) == []
    assert rounds == 0, "a round saw a shortfall in a healthy backlog (the two-round rule hid it)"
    assert system.q("SELECT count(*) FROM outbox.attempts")[0][0] == BACKLOG
    print(f"{BACKLOG} BULK jobs drained in {drained_s:.1f} s by {SLOTS} slots; rounds with a shortfall: {rounds}; "
          "republished: 0")


# --- By hand: tierbox reconcile -------------------------------------------------------------------


async def test_cli_dry_run_says_what_it_would_republish_and_changes_nothing(
        quick: Settings, amqp: aio_pika.abc.AbstractConnection) -> None:
    from click.testing import CliRunner

    from tests.helpers import settings_env
    from tierbox.cli.main import cli

    jobs = enqueue(quick, "sample.critical_effect", 2)
    await publish_all(quick)
    await purge(amqp, quick.queue_name("critical"))
    env = settings_env(quick)

    def run(*args: str) -> str:  # in a thread: the command runs its own event loop
        result = CliRunner().invoke(cli, ["reconcile", *args], env=env, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    # No previous round saw them missing: the two-round rule holds them back.
    plain = await asyncio.to_thread(run, "--tier", "critical", "--dry-run")
    assert "would republish 0 job(s)" in plain and "SHORTFALL" in plain
    forced = await asyncio.to_thread(run, "--tier", "critical", "--dry-run", "--force")
    assert {f"would republish critical {j}" for j in jobs} <= set(forced.splitlines())
    assert "would republish 2 job(s)" in forced
    assert republished(quick) == [] and q(quick, "SELECT count(*) FROM outbox.pending") == [(0,)]
    audit = q(quick, "SELECT action, actor_kind, result, job_ids, detail->>'dry_run' FROM outbox.admin_audit ORDER BY id")
    assert audit == [("reconcile", "os_user", "ok", [], "true")] * 2
    done = await asyncio.to_thread(run, "--tier", "critical", "--force", "--reason", "queue purged by hand")
    assert "republished 2 job(s)" in done
    assert sorted(republished(quick)) == sorted(jobs)
    assert q(quick, "SELECT DISTINCT reason FROM outbox.republished") == [("manual",)]
    last = q(quick, "SELECT job_ids, detail->>'reason' FROM outbox.admin_audit ORDER BY id DESC LIMIT 1")[0]
    assert sorted(last[0]) == sorted(jobs) and last[1] == "queue purged by hand"


async def test_cli_json_exits_1_on_a_skipped_round(quick: Settings) -> None:
    """Like the table form: a script reading ``--json`` must not take a round that never ran for done."""
    from click.testing import CliRunner

    from tests.helpers import settings_env
    from tierbox.cli.main import cli

    env = settings_env(msgspec.structs.replace(quick, redis_url="redis://127.0.0.1:1/0"))
    result = await asyncio.to_thread(lambda: CliRunner().invoke(cli, ["reconcile", "--json"], env=env,
                                                                catch_exceptions=False))
    assert result.exit_code == 1, result.output
    body = msgspec.json.decode(result.output)
    assert "Redis unreachable" in body["skipped"] and body["tiers"] == []
