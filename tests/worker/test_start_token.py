"""A start whose commit landed but whose reply was lost: the same delivery resumes its attempt.

``start_attempt`` commits the attempt and the lease before the handler runs. When the reply to
that commit is lost (the connection drops after Postgres committed), the worker backs off and
tries the delivery again; without the delivery's start token that retry found its own lease,
acked the message as a duplicate and left the job to the reaper: a ``crashed`` attempt that
never ran, and a job with ``max_retries = 0`` dead-lettered unrun.

The pool here runs in process, against real Postgres and RabbitMQ; the lost reply is made at the
client boundary: the real statement commits, then its caller gets the error a dropped
connection raises.
"""

from __future__ import annotations

import uuid
from typing import Any

import aio_pika
import psycopg
import pytest

import outbox
from outbox import _transitions as transitions
from outbox.config import Settings
from tests.worker.inprocess import high_pool, published
from tierbox.workers import processing
from tierbox.workers.pool import Pool

RUNS: list[str] = []
LOST_REPLY = "consuming input failed: server closed the connection unexpectedly (test: reply lost after commit)"


async def _process_queued(settings: Settings, pool: Pool, count: int) -> Any:
    """Take ``count`` messages from ``high`` and let the pool process each; returns what is left
    on the queue afterwards (None: nothing, every message was acked)."""
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(settings.queue_name("high"), ensure=False)
        for _ in range(count):
            message = await queue.get(no_ack=False, timeout=10)
            assert message is not None
            await pool.process("high", message)
        return await queue.get(no_ack=False, fail=False)
    finally:
        await connection.close()


def _lose_the_first_start_reply_of_each_job(pool: Pool, lost: list[uuid.UUID]) -> None:
    """Both start paths commit for real, then raise what a dropped connection raises, once per job."""
    record_many, start_alone = pool.starts.group._record, pool.ledger.start

    async def record_then_lose_the_reply(conn: Any, requests: Any) -> Any:
        outcomes = await record_many(conn, requests)  # committed
        if any(request[0] not in lost for request in requests):
            lost.extend(request[0] for request in requests)
            raise psycopg.OperationalError(LOST_REPLY)
        return outcomes

    async def start_then_lose_the_reply(job_id: uuid.UUID, *args: Any, **kw: Any) -> Any:
        result = await start_alone(job_id, *args, **kw)  # committed
        if job_id not in lost:
            lost.append(job_id)
            raise psycopg.OperationalError(LOST_REPLY)
        return result

    pool.starts.group._record = record_then_lose_the_reply  # type: ignore[method-assign]
    pool.ledger.start = start_then_lose_the_reply  # type: ignore[method-assign]


@outbox.task(tier="high", name="tests.token.sync_ctx", max_retries=0)
def sync_ctx(ctx: outbox.TaskContext, note: str) -> None:
    """Sync with ctx: started through the batched START_MANY."""
    RUNS.append(note)


@outbox.task(tier="high", name="tests.token.async_plain", max_retries=0)
async def async_plain(note: str) -> None:
    """Async without ctx: started through the batched START_MANY."""
    RUNS.append(note)


@outbox.task(tier="high", name="tests.token.async_ctx", max_retries=0)
async def async_ctx(ctx: outbox.TaskContext, note: str) -> None:
    """Async with ctx: started alone, on its transaction's connection (Ledger.start)."""
    RUNS.append(note)


def _start(conn: psycopg.Connection[Any], job: uuid.UUID, token: uuid.UUID | None) -> tuple[str, int]:
    row = conn.execute(transitions.START_ATTEMPT.pg, {"job_id": job, "worker_id": "w", "lease_s": 30.0,
                                                  "acked_early": False, "token": token}).fetchone()
    assert row is not None
    return row[0], row[1]


def test_the_same_token_resumes_the_attempt_any_other_copy_is_a_duplicate(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, async_plain, args=["sql"])
        batched = outbox.enqueue(conn, async_plain, args=["sql-many"])
    token = uuid.uuid4()
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert _start(conn, job, token) == ("run", 1)
        conn.execute("UPDATE outbox.leases SET expires_at = now() + interval '1 second' WHERE job_id = %s", (job,))
        assert _start(conn, job, token) == ("run", 1)  # the reply to the first was lost: resumed
        assert _start(conn, job, uuid.uuid4()) == ("running", 1)  # another delivery of the job
        assert _start(conn, job, None) == ("running", 1)  # a caller without a token (outbox.testing)
        lease = conn.execute("SELECT attempt, start_token, expires_at > now() + interval '20 seconds' "
                             "FROM outbox.leases WHERE job_id = %s", (job,)).fetchone()
        assert lease == (1, token, True)  # same attempt, lease renewed by the resumed start
        assert conn.execute("SELECT attempts FROM outbox.jobs WHERE id = %s", (job,)).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM outbox.attempts WHERE job_id = %s", (job,)).fetchone() == (1,)
        many = {"job_ids": [batched], "acked_early": [False], "tokens": [token], "worker_id": "w", "lease_s": 30.0}
        first = conn.execute(transitions.START_MANY.pg, many).fetchone()
        again = conn.execute(transitions.START_MANY.pg, many).fetchone()
        other = conn.execute(transitions.START_MANY.pg, {**many, "tokens": [uuid.uuid4()]}).fetchone()
        assert first is not None and again is not None and other is not None
        assert (first[1], first[2]) == ("run", 1) and (again[1], again[2]) == ("run", 1)
        assert (other[1], other[2]) == ("running", 1)


async def test_a_lost_start_reply_resumes_the_attempt_instead_of_leaving_it_to_the_lease(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(processing, "INFRA_BACKOFF_S", (0.05, 0.05))
    RUNS.clear()
    with psycopg.connect(settings.psycopg_url) as conn:
        jobs = {note: outbox.enqueue(conn, task, args=[note])
                for note, task in (("batched-sync", sync_ctx), ("batched-async", async_plain), ("alone", async_ctx))}
    await published(settings, 3)
    lost: list[uuid.UUID] = []
    async with high_pool(settings) as pool:
        _lose_the_first_start_reply_of_each_job(pool, lost)
        assert await _process_queued(settings, pool, len(jobs)) is None  # every message acked, none requeued

    assert sorted(lost) == sorted(jobs.values())  # every job's first start reply was lost
    assert sorted(RUNS) == sorted(jobs)  # each handler ran once, right away
    with psycopg.connect(settings.psycopg_url) as conn:
        rows = conn.execute("SELECT id, status, attempts FROM outbox.jobs").fetchall()
        outcomes = conn.execute("SELECT job_id, attempt, outcome FROM outbox.attempts").fetchall()
        leases = conn.execute("SELECT count(*) FROM outbox.leases").fetchone()
    assert sorted((status, attempts) for _, status, attempts in rows) == [("succeeded", 1)] * 3
    assert sorted(o for _, _, o in outcomes) == ["succeeded"] * 3 and all(a == 1 for _, a, _ in outcomes)
    assert leases == (0,)


@outbox.task(tier="high", name="tests.token.rate_limited", max_retries=0, rate_limit="1/h")
async def rate_limited(note: str) -> None:
    """One start an hour: a second admission of the same delivery would be deferred."""
    RUNS.append(note)


async def test_a_retry_after_a_lost_start_reply_is_not_admitted_again(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flow control admits a delivery once: the try after a lost start reply must reach
    start_attempt with its token, not be deferred by the rate limit its first try already paid
    (which left the job running under a lease nobody holds, and lost an attempt that never ran)."""
    monkeypatch.setattr(processing, "INFRA_BACKOFF_S", (0.05, 0.05))
    RUNS.clear()
    with psycopg.connect(settings.psycopg_url) as conn:
        job = outbox.enqueue(conn, rate_limited, args=["paid once"])
    await published(settings, 1)
    lost: list[uuid.UUID] = []
    async with high_pool(settings) as pool:
        _lose_the_first_start_reply_of_each_job(pool, lost)
        await _process_queued(settings, pool, 1)
    assert lost == [job] and RUNS == ["paid once"]
    assert not any(key.startswith("deferred") for key in pool.counts), pool.counts
    with psycopg.connect(settings.psycopg_url) as conn:
        assert conn.execute("SELECT status, attempts FROM outbox.jobs WHERE id = %s", (job,)).fetchone() == (
            "succeeded", 1)


@outbox.task(tier="high", name="tests.token.fails", max_retries=3)
async def fails(note: str) -> None:
    """Fails: its retry is recorded through Ledger.retry."""
    RUNS.append(note)
    raise RuntimeError("downstream said no")


async def test_once_the_handler_ran_a_retried_delivery_does_not_run_it_again_in_the_same_attempt(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    """The handler failed and its retry could not be recorded (Postgres gone): the delivery's next
    try must not resume the attempt, which would run the handler twice under one attempt number.
    It meets the lease as a duplicate, and the reaper takes the job from there, as before."""
    monkeypatch.setattr(processing, "INFRA_BACKOFF_S", (0.05,))
    RUNS.clear()
    with psycopg.connect(settings.psycopg_url) as conn:
        job = outbox.enqueue(conn, fails, args=["once"])
    await published(settings, 1)

    async def retry_not_recorded(*args: Any, **kw: Any) -> bool:
        raise psycopg.OperationalError(LOST_REPLY)

    async with high_pool(settings) as pool:
        pool.ledger.retry = retry_not_recorded  # type: ignore[method-assign]
        await _process_queued(settings, pool, 1)
    assert RUNS == ["once"]  # not run again by the retried delivery
    assert pool.counts.get("skipped_running") == 1
    with psycopg.connect(settings.psycopg_url) as conn:
        assert conn.execute("SELECT status, attempts FROM outbox.jobs WHERE id = %s", (job,)).fetchone() == (
            "running", 1)  # left to its lease: the reaper retries it
        assert conn.execute("SELECT count(*) FROM outbox.leases").fetchone() == (1,)
