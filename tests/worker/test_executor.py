"""One attempt on the worker's executor, in process, against real Postgres.

The system tests drive handlers through real worker processes; these pin down the
executor's two async paths on one pooled connection: a handler that takes ``ctx`` runs in
a transaction with its success, one that does not gets an autocommitted, fenced SUCCEED.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
import sqlalchemy.exc
from sqlalchemy import create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

import outbox
from outbox._encoding import Payload
from outbox.context import TaskContext
from outbox.registry import Task
from tierbox.workers.execute import AttemptTimeout, Executor, Result
from tierbox.workers.ledger import Ledger

CALLS: list[str] = []


@outbox.task(tier="high", name="tests.exec.plain")
async def plain(note: str) -> None:
    """No ctx: the sessionless path."""
    CALLS.append(note)


@outbox.task(tier="high", name="tests.exec.slow", timeout_s=0.2)
async def slow() -> None:
    """No ctx, past its timeout."""
    await asyncio.sleep(5)


@outbox.task(tier="high", name="tests.exec.with_ctx")
async def with_ctx(ctx: outbox.TaskContext, note: str) -> None:
    """ctx: its write commits with the success."""
    await ctx.session.execute(text("INSERT INTO public.exec_effects (job_id, note) VALUES (:j, :n)"),
                              {"j": ctx.job_id, "n": note})


def _sa(url: str, driver: str) -> str:
    return f"postgresql+{driver}://" + url.partition("://")[2]


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("CREATE TABLE public.exec_effects (job_id uuid, note text)")
    eng = create_async_engine(_sa(db_url, "psycopg"), pool_size=2, max_overflow=0)  # the attempt + the success batcher
    yield eng
    await eng.dispose()


async def _attempt(db_url: str, engine: AsyncEngine, task: Task, *args: Any,
                   bump_attempts: bool = False) -> tuple[uuid.UUID, Any]:
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, task, args=list(args))
    executor = Executor(engine, create_engine(_sa(db_url, "psycopg")), threads=1)
    ledger = Ledger(engine, "test-worker", lease_s=30)
    try:
        async with engine.connect() as conn:
            start = await ledger.start(job, acked_early=False, conn=conn)
            assert start.decision == "run"
            if bump_attempts:  # as if the lease was reaped and another worker started attempt 2
                with psycopg.connect(db_url, autocommit=True) as other:
                    other.execute("UPDATE outbox.jobs SET attempts = attempts + 1 WHERE id = %s", (job,))
            ctx = TaskContext(job_id=job, task=task.name, tier="high", attempt=start.attempt,
                              max_retries=start.max_retries, enqueued_at=start.enqueued_at, headers={})
            try:
                outcome: Any = await executor.run(task, Payload(args=list(args)), ctx, conn)
            except AttemptTimeout as exc:
                outcome = exc
            # Whatever happened, the connection is back to a clean, usable, transactional state.
            assert not conn.in_transaction()
            assert (await conn.exec_driver_sql("SELECT 1")).scalar() == 1
            await conn.rollback()
            raw = (await conn.get_raw_connection()).driver_connection
            assert raw.autocommit is False
    finally:
        executor.shutdown()
    return job, outcome


def _job(db_url: str, job: uuid.UUID) -> tuple[Any, ...]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(  # type: ignore[return-value]
            "SELECT j.status, a.outcome, (SELECT count(*) FROM outbox.leases l WHERE l.job_id = j.id) "
            "FROM outbox.jobs j JOIN outbox.attempts a ON a.job_id = j.id WHERE j.id = %s", (job,)).fetchone()


async def test_sessionless_success_is_recorded(db_url: str, engine: AsyncEngine) -> None:
    job, outcome = await _attempt(db_url, engine, plain, "one")
    assert outcome is Result.SUCCEEDED and CALLS[-1] == "one"
    assert _job(db_url, job) == ("succeeded", "succeeded", 0)


async def test_sessionless_success_is_fenced_when_the_ledger_moved_on(db_url: str, engine: AsyncEngine) -> None:
    job, outcome = await _attempt(db_url, engine, plain, "late", bump_attempts=True)
    assert outcome is Result.FENCED
    assert _job(db_url, job) == ("running", None, 1)  # nothing written: the newer attempt owns the job


async def test_sessionless_timeout_leaves_the_connection_usable(db_url: str, engine: AsyncEngine) -> None:
    job, outcome = await _attempt(db_url, engine, slow)
    assert isinstance(outcome, AttemptTimeout)
    assert _job(db_url, job) == ("running", None, 1)  # the pool records the failure, not the executor


async def test_ctx_handler_commits_its_write_with_the_success(db_url: str, engine: AsyncEngine) -> None:
    job, outcome = await _attempt(db_url, engine, with_ctx, "written")
    assert outcome is Result.SUCCEEDED
    assert _job(db_url, job) == ("succeeded", "succeeded", 0)
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT job_id, note FROM public.exec_effects").fetchall() == [(job, "written")]


async def test_ctx_handler_write_is_fenced_too(db_url: str, engine: AsyncEngine) -> None:
    _, outcome = await _attempt(db_url, engine, with_ctx, "stale", bump_attempts=True)
    assert outcome is Result.FENCED
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM public.exec_effects").fetchone() == (0,)


async def test_successes_finishing_together_share_a_statement_and_keep_their_own_fence(
        db_url: str, engine: AsyncEngine) -> None:
    from tierbox.workers.batch import SuccessBatcher

    with psycopg.connect(db_url) as conn:
        jobs = [outbox.enqueue(conn, plain, args=[str(i)]) for i in range(40)]
    ledger = Ledger(engine, "test-worker", lease_s=30)
    for job in jobs:
        assert (await ledger.start(job, acked_early=False)).decision == "run"
    with psycopg.connect(db_url, autocommit=True) as other:  # the last ten were reaped and restarted elsewhere
        other.execute("UPDATE outbox.jobs SET attempts = attempts + 1 WHERE id = ANY(%s)", (jobs[30:],))
    batcher = SuccessBatcher(engine)
    results = await asyncio.gather(*(batcher.succeed(job, 1) for job in jobs))
    assert results == [True] * 30 + [False] * 10
    assert batcher.group.recorded == 40 and batcher.group.flushes < 40  # 40 finished together: batched
    with psycopg.connect(db_url) as conn:
        statuses = dict(conn.execute("SELECT id, status FROM outbox.jobs").fetchall())
        assert conn.execute("SELECT count(*) FROM outbox.leases").fetchone() == (10,)
    assert [statuses[j] for j in jobs] == ["succeeded"] * 30 + ["running"] * 10


async def test_a_success_postgres_will_not_take_is_outcome_not_recorded_not_a_handler_failure() -> None:
    from tests.helpers import free_port
    from tierbox.workers.batch import OutcomeNotRecorded, SuccessBatcher

    dead = create_async_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing",
                               connect_args={"connect_timeout": 1})
    try:
        with pytest.raises(OutcomeNotRecorded, match="OperationalError"):
            await SuccessBatcher(dead).succeed(uuid.uuid4(), 1)
    finally:
        await dead.dispose()


async def test_deliveries_starting_together_share_a_statement_and_get_their_own_decision(
        db_url: str, engine: AsyncEngine) -> None:
    from tierbox.workers.batch import StartBatcher

    with psycopg.connect(db_url) as conn:
        jobs = [outbox.enqueue(conn, plain, args=[str(i)]) for i in range(30)]
        conn.execute("UPDATE outbox.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (jobs[0],))
    unknown = uuid.uuid4()
    starts = StartBatcher(Ledger(engine, "test-worker", lease_s=30))
    # jobs[1] is delivered twice at once (a redelivery racing the original): exactly one copy runs.
    requests = [*jobs, jobs[1], unknown]
    results = await asyncio.gather(*(starts.start(job, acked_early=False) for job in requests))
    decisions = [r.decision for r in results]
    assert decisions[0] == "finished" and decisions[-1] == "unknown"
    assert sorted([decisions[1], decisions[-2]]) == ["run", "running"]
    assert decisions[2:30] == ["run"] * 28 and all(r.attempt == 1 for r in results[2:30])
    assert starts.group.recorded == 32 and starts.group.flushes < 32  # started together: batched
    with psycopg.connect(db_url) as conn:
        leases = {r[0] for r in conn.execute("SELECT job_id FROM outbox.leases").fetchall()}
        attempts = conn.execute("SELECT count(*) FROM outbox.attempts").fetchone()
    assert leases == set(jobs[1:]) and attempts == (29,)  # one lease and one attempt per job that runs


async def test_a_start_postgres_refuses_fails_each_waiter_with_the_error() -> None:
    from tests.helpers import free_port
    from tierbox.workers.batch import StartBatcher

    dead = create_async_engine(f"postgresql+psycopg://nobody@127.0.0.1:{free_port()}/nothing",
                               connect_args={"connect_timeout": 1})
    try:
        starts = StartBatcher(Ledger(dead, "test-worker", lease_s=30))
        results = await asyncio.gather(*(starts.start(uuid.uuid4(), acked_early=False) for _ in range(3)),
                                       return_exceptions=True)
        assert all(isinstance(r, sqlalchemy.exc.OperationalError) for r in results), results
    finally:
        await dead.dispose()


async def test_a_start_whose_slot_was_cancelled_is_handed_to_shutdown_not_lost(
        db_url: str, engine: AsyncEngine) -> None:
    """Shutdown cancels a slot while its start is in a batch statement: the committed lease comes back
    from orphans() so the pool can release the job, instead of waiting for the lease to expire."""
    from tierbox.workers.batch import StartBatcher

    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, plain, args=["x"])
    starts = StartBatcher(Ledger(engine, "test-worker", lease_s=30))
    waiter = asyncio.create_task(starts.start(job, acked_early=False))
    await asyncio.sleep(0)  # the waiter has queued its request and the flush is scheduled
    waiter.cancel()
    orphans = await starts.orphans()
    assert [(j, r.decision, r.attempt) for j, r in orphans] == [(job, "run", 1)]
    assert await starts.orphans() == []  # handed over once
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.leases WHERE job_id = %s", (job,)).fetchone() == (1,)


async def test_a_job_row_held_elsewhere_does_not_stall_the_deliveries_batched_with_it(
        db_url: str, engine: AsyncEngine) -> None:
    from tierbox.workers.batch import StartBatcher

    with psycopg.connect(db_url) as conn:
        held, free = (outbox.enqueue(conn, plain, args=[str(i)]) for i in range(2))
    starts = StartBatcher(Ledger(engine, "test-worker", lease_s=30))
    async with await psycopg.AsyncConnection.connect(db_url) as operator:  # e.g. an open psql transaction
        await operator.execute("SELECT 1 FROM outbox.jobs WHERE id = %s FOR UPDATE", (held,))
        waiting = asyncio.create_task(starts.start(held, acked_early=False))
        result = await asyncio.wait_for(starts.start(free, acked_early=False), 5)
        assert (result.decision, result.attempt) == ("run", 1)
        await asyncio.sleep(0.3)
        assert not waiting.done()  # the held job waits for its row, alone
        await operator.rollback()
    assert (await asyncio.wait_for(waiting, 5)).decision == "run"
