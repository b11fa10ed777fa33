"""``attempts_left`` (Python) and ``outbox.reap`` (SQL) make the same retry-or-dead decision."""

from __future__ import annotations

import uuid

import psycopg
import pytest

import outbox
from outbox import _transitions as transitions
from outbox._attempts import attempts_left
from outbox._failure import ErrorInfo
from outbox.context import TaskContext


@outbox.task(tier="high", name="tests.attempts.any")
def any_task() -> None:
    """Never run: the test drives its job through the ledger statements."""


def _drive_to(conn: psycopg.Connection, job: uuid.UUID, attempt: int) -> None:
    """Start ``attempt`` attempts of ``job``, each but the last failed and retried at once."""
    for n in range(1, attempt + 1):
        row = conn.execute(transitions.START_ATTEMPT.pg, {"job_id": job, "worker_id": "w", "lease_s": 30.0,
                                                      "acked_early": False, "token": None}).fetchone()
        assert row is not None and (row[0], row[1]) == ("run", n)
        if n < attempt:
            retried = conn.execute(transitions.RETRY.pg, {"job_id": job, "attempt": n, "delay_s": 0.0,
                                                      "outcome": "failed", **ErrorInfo("E", "m").params()})
            assert retried.fetchone() == (1,)


@pytest.mark.parametrize(("attempt", "max_retries"), [(1, 0), (1, 1), (2, 1), (1, 3), (3, 3), (4, 3), (2, 5), (6, 5)])
def test_python_and_sql_agree_on_the_last_attempt(db_url: str, attempt: int, max_retries: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        job = outbox.enqueue(conn, any_task, max_retries=max_retries)
        _drive_to(conn, job, attempt)
        conn.execute("UPDATE outbox.leases SET expires_at = now() - interval '1 second' WHERE job_id = %s", (job,))
        reaped = conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall()
    left = attempts_left(attempt, max_retries)
    assert reaped == [(job, "retry" if left > 0 else "dead")]
    assert left == max_retries + 1 - attempt
    ctx = TaskContext(job_id=job, task="tests.attempts.any", tier="high", attempt=attempt, max_retries=max_retries,
                      enqueued_at=None, headers={})
    assert ctx.is_last_attempt == (left == 0)


def test_attempts_left_never_goes_negative() -> None:
    assert attempts_left(5, 2) == 0
    assert attempts_left(3, 2) == 0 and attempts_left(2, 2) == 1 and attempts_left(1, 0) == 0
