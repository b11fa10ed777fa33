"""outbox.testing: users run their jobs in-process inside a rolled-back test transaction."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

import outbox
import outbox.testing
from tests import sample_tasks

EXAMPLE_DDL = "CREATE TABLE IF NOT EXISTS public.receipts (order_id int)"


@outbox.task(tier=outbox.Tier.HIGH, name="example.send_receipt")
def send_receipt(ctx: outbox.TaskContext, order_id: int) -> None:
    """Records a receipt through the job's session."""
    ctx.session.execute(text("INSERT INTO public.receipts VALUES (:o)"), {"o": order_id})


@pytest.fixture
def session(shared_db_url: str) -> Iterator[Session]:
    engine = create_engine(shared_db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    with engine.connect() as conn:
        tx = conn.begin()
        conn.execute(text(EXAMPLE_DDL))
        conn.execute(text(sample_tasks.EFFECTS_DDL))
        yield Session(bind=conn, join_transaction_mode="create_savepoint")
        tx.rollback()
    engine.dispose()


@outbox.task(tier=outbox.Tier.HIGH, name="example.declined")
def declined() -> None:
    """Always refuses, non-retryably."""
    raise outbox.Reject("card declined")


def checkout(session: Session, order_id: int) -> None:
    """Application code under test: enqueues inside the caller's transaction."""
    outbox.enqueue(session, send_receipt, args=[order_id])


def test_assert_enqueued_and_drain(session: Session) -> None:
    checkout(session, 7)
    job = outbox.testing.assert_enqueued(session, "example.send_receipt", args=[7])
    assert job.tier == "high" and job.status == "pending"
    with pytest.raises(AssertionError, match="args=\\[8\\]"):
        outbox.testing.assert_enqueued(session, send_receipt, args=[8])
    results = outbox.testing.drain(session)
    assert [(r.task, r.status) for r in results] == [("example.send_receipt", "succeeded")]
    assert session.execute(text("SELECT order_id FROM public.receipts")).all() == [(7,)]
    assert session.execute(text("SELECT status, attempts FROM outbox.jobs WHERE id = :i"),
                           {"i": job.job_id}).one() == ("succeeded", 1)


def test_drain_runs_chained_steps_and_records_failures(session: Session) -> None:
    outbox.enqueue(session, "sample.chain_first", args=[1])
    rejected = outbox.enqueue(session, declined)
    results = {r.task: r for r in outbox.testing.drain(session)}
    assert results["sample.chain_first"].status == "succeeded"
    assert results["sample.chain_second"].status == "succeeded"  # enqueued by the first step, run too
    assert results["example.declined"].status == "dead"
    reason = session.execute(text("SELECT reason FROM outbox.dead_letters WHERE job_id = :i"), {"i": rejected})
    assert reason.scalar() == "non_retryable"
    # Recorded as a worker records it (outbox.failure.ErrorInfo): type, message and traceback.
    error_type, traceback = session.execute(text("SELECT error_type, traceback FROM outbox.attempts WHERE job_id = :i"),
                                            {"i": rejected}).one()
    assert error_type == "Reject" and "Traceback (most recent call last)" in traceback


@outbox.task(tier=outbox.Tier.HIGH, name="example.fails_once", max_retries=1)
def fails_once(ctx: outbox.TaskContext) -> None:
    """Fails its first attempt, succeeds on the retry."""
    if ctx.attempt == 1:
        raise RuntimeError("first attempt fails")


def test_a_retry_runs_at_the_next_drain_of_the_same_transaction_and_jobs_limits_the_run(session: Session) -> None:
    flaky = outbox.enqueue(session, fails_once)
    other = outbox.enqueue(session, send_receipt, args=[7])
    [first] = outbox.testing.drain(session, jobs=[flaky])  # only the flaky job; the receipt stays pending
    assert first.status == "retrying"
    assert session.execute(text("SELECT count(*) FROM outbox.pending WHERE job_id = :i"), {"i": other}).scalar() == 1
    # The test transaction's now() stands still; the retry is due at it, so the next drain starts it.
    [second] = outbox.testing.drain(session, jobs=[flaky])
    assert second.status == "succeeded"
    attempts = session.execute(text("SELECT attempt, outcome FROM outbox.attempts WHERE job_id = :i ORDER BY attempt"),
                               {"i": flaky}).all()
    assert [tuple(a) for a in attempts] == [(1, "failed"), (2, "succeeded")]
