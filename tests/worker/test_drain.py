"""Drain mode: ``Pool.drain()`` and ``tierbox worker --burst`` return once there is nothing left to do.

Real relay process, real RabbitMQ and Postgres. "Nothing left" is defined in ``workers.drain``:
no ready message in the pool's queues, nothing buffered or in hand, no outbox row of its tiers
due within the settle interval (so a retry due at once is run before the drain returns).
"""

from __future__ import annotations

import asyncio
import time

import psycopg
import pytest

import outbox
from outbox.registry import registry
from outbox.tiers import PoolSpec
from tests.system import System
from tierbox.workers.pool import Pool

pytestmark = pytest.mark.slow

RUNS: list[int] = []


@outbox.task(tier="high", name="tests.drain.count")
async def count(n: int) -> None:
    """Quick, sessionless."""
    RUNS.append(n)


@outbox.task(tier="high", name="tests.drain.slow")
async def slow(seconds: float) -> None:
    """Still running when every other job is done: the drain must wait for it."""
    await asyncio.sleep(seconds)
    RUNS.append(-1)


@outbox.task(tier="high", name="tests.drain.fails_once", max_retries=2, retry_backoff_s=0.05, retry_backoff_max_s=0.05)
def fails_once(ctx: outbox.TaskContext) -> None:
    """Fails its first attempt; the retry is due within 50 ms, inside the drain's settle interval."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


def _high_pool(system: System) -> Pool:
    return Pool(system.settings, "high", PoolSpec(tiers=("high",), concurrency=4), registry)


async def test_drain_returns_once_every_job_ran_a_retry_and_a_slow_one_included(system: System) -> None:
    RUNS.clear()
    system.relay()
    with psycopg.connect(system.settings.database_url) as conn:
        jobs = outbox.enqueue_many(conn, [outbox.job(count, args=[i]) for i in range(30)])
        retried = outbox.enqueue(conn, fails_once)
        slow_job = outbox.enqueue(conn, slow, args=[1.5])
    counts = await asyncio.wait_for(_high_pool(system).drain(), 90)
    assert system.q("SELECT status, count(*) FROM outbox.jobs GROUP BY status") == [("succeeded", 32)]
    assert sorted(RUNS) == [-1, *range(30)] and len(jobs) == 30
    assert system.outcomes(retried) == ["failed", "succeeded"]
    assert system.outcomes(slow_job) == ["succeeded"]
    assert counts["succeeded"] == 32 and counts["retried"] == 1
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]


async def test_drain_waits_for_jobs_due_in_the_outbox_until_a_relay_publishes_them(system: System) -> None:
    RUNS.clear()
    with psycopg.connect(system.settings.database_url) as conn:
        outbox.enqueue_many(conn, [outbox.job(count, args=[i]) for i in range(5)])
    drain = asyncio.create_task(_high_pool(system).drain())
    done, _ = await asyncio.wait({drain}, timeout=2.0)
    assert not done, "drained while five jobs were due in the outbox"  # queues empty, no relay yet
    await asyncio.to_thread(system.relay)
    counts = await asyncio.wait_for(drain, 60)
    assert sorted(RUNS) == list(range(5)) and counts["succeeded"] == 5


async def test_an_idle_pool_drains_at_once_and_does_not_wait_for_a_job_due_later(system: System) -> None:
    job = system.enqueue("sample.effect", "later", delay=120)
    began = time.monotonic()
    counts = await asyncio.wait_for(_high_pool(system).drain(), 30)
    assert time.monotonic() - began < 10  # connect, two checks 0.5 s apart, stop
    assert counts == {}
    assert system.status(job) == "pending"


def test_worker_burst_exits_zero_once_drained(system: System) -> None:
    system.relay()
    jobs = [system.enqueue("sample.effect", f"burst {i}") for i in range(10)]
    flaky = system.enqueue("sample.flaky", kwargs={"fail_times": 1})  # retried after 0-0.2 s
    worker = system.worker("--pool", "urgent", "--burst")
    assert worker.wait(90) == 0, worker.output()[-3000:]
    assert "worker.drained" in worker.output() and "worker.stopped" in worker.output()
    assert all(system.status(j) == "succeeded" for j in jobs)
    assert all(len(system.effects(j)) == 1 for j in jobs)
    assert system.outcomes(flaky) == ["failed", "succeeded"]
