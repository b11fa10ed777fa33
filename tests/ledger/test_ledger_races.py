"""The ledger's transitions against a relay that holds a job's pending row mid-batch.

``start_attempt`` does not wait for the relay that published a job (migration 0005), so a
running job may still have a ``pending`` row that a relay holds until its batch commits. These
tests hold that row from a second connection, exactly as a relay batch does, and check that
``RETRY`` waits it out and upserts, and that ``reap`` skips the job rather than wait (and takes
it on its next round).
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import psycopg
import pytest

import outbox
from outbox import _transitions as transitions
from outbox._failure import ErrorInfo
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import wait_until


def _started(db_url: str) -> uuid.UUID:
    """A job whose attempt 1 is running while its pending row still exists (published, uncommitted)."""
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, "sample.invoice", args=[1])
    return job


def _start(db_url: str, job: uuid.UUID) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        row = conn.execute(transitions.START_ATTEMPT.pg, {"job_id": job, "worker_id": "w", "lease_s": 30.0,
                                                      "acked_early": False, "token": None}).fetchone()
    assert row is not None and row[0] == "run"


def _one(db_url: str, sql: str, *params: Any) -> Any:
    with psycopg.connect(db_url) as conn:
        row = conn.execute(sql, params).fetchone()
        return row[0] if row else None


def _relay_holds(db_url: str, job: uuid.UUID) -> psycopg.Connection[Any]:
    holder = psycopg.connect(db_url)
    assert holder.execute("SELECT job_id FROM outbox.pending WHERE job_id = %s FOR UPDATE", (job,)).fetchone()
    return holder


def test_start_leaves_a_held_pending_row_to_its_relay(db_url: str) -> None:
    job = _started(db_url)
    holder = _relay_holds(db_url, job)
    try:
        _start(db_url, job)  # returns at once: the held row is not awaited
        assert _one(db_url, "SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == 1
    finally:
        holder.rollback()
        holder.close()
    assert _one(db_url, "SELECT status FROM outbox.jobs WHERE id = %s", job) == "running"


def _retry_in_thread(db_url: str, job: uuid.UUID, out: dict[str, Any]) -> threading.Thread:
    def run() -> None:
        try:
            with psycopg.connect(db_url, autocommit=True) as conn:
                out["rows"] = conn.execute(transitions.RETRY.pg, {
                    "job_id": job, "attempt": 1, "delay_s": 60.0, "outcome": "failed",
                    **ErrorInfo("E", "boom").params()}).fetchall()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out["error"] = exc
    thread = threading.Thread(target=run)
    thread.start()
    return thread


def _waiting_on_lock(db_url: str) -> bool:
    return bool(_one(db_url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                             "AND query LIKE %s", "%outbox.jobs%retrying%"))


@pytest.mark.parametrize("relay_ends", ["commits MARK_PUBLISHED", "rolls back"])
def test_retry_waits_out_the_relay_batch_then_upserts(db_url: str, relay_ends: str) -> None:
    job = _started(db_url)
    holder = _relay_holds(db_url, job)
    _start(db_url, job)
    out: dict[str, Any] = {}
    thread = _retry_in_thread(db_url, job, out)
    wait_until(lambda: _waiting_on_lock(db_url), timeout=10, what="RETRY waiting for the relay's batch")
    if relay_ends == "commits MARK_PUBLISHED":  # the row goes, the running status stays
        holder.execute(transitions.MARK_PUBLISHED.pg, {"ids": [job]})
        holder.commit()
    else:  # the relay died or its publish failed: its row stays
        holder.rollback()
    holder.close()
    thread.join(10)
    assert "error" not in out, out.get("error")  # was: duplicate key on pk_pending after a rollback
    assert out["rows"] == [(1,)]
    assert _one(db_url, "SELECT status FROM outbox.jobs WHERE id = %s", job) == "retrying"
    assert _one(db_url, "SELECT count(*) FROM outbox.pending WHERE job_id = %s", job) == 1
    assert _one(db_url, "SELECT available_at > now() + interval '50 seconds' FROM outbox.pending "
                        "WHERE job_id = %s", job) is True  # due at the retry time


def test_reap_skips_a_job_a_relay_holds_and_takes_it_next_round(db_url: str) -> None:
    job = _started(db_url)
    holder = _relay_holds(db_url, job)
    _start(db_url, job)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE outbox.leases SET expires_at = now() - interval '1 second' WHERE job_id = %s", (job,))
        reaped = conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall()  # returns at once
        assert reaped == []
        assert conn.execute("SELECT count(*) FROM outbox.leases").fetchone() == (1,)  # kept for the next round
        holder.rollback()  # the relay's batch ends; its row stays
        holder.close()
        assert conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall() == [(job, "retry")]
        assert conn.execute("SELECT status FROM outbox.jobs WHERE id = %s", (job,)).fetchone() == ("retrying",)
        assert conn.execute("SELECT count(*), bool_and(available_at <= now()) FROM outbox.pending "
                            "WHERE job_id = %s", (job,)).fetchone() == (1, True)  # upserted, due now
        assert conn.execute("SELECT outcome FROM outbox.attempts WHERE job_id = %s", (job,)).fetchall() == [
            ("crashed",)]


def test_reap_skips_a_job_a_worker_is_finishing_and_takes_it_next_round(db_url: str) -> None:
    """Reap holds up to 100 leases: it must not wait for a job row a finishing worker holds
    (that worker waits for the lease next: a cycle), so it skips the job this round."""
    job = _started(db_url)
    _start(db_url, job)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("DELETE FROM outbox.pending WHERE job_id = %s", (job,))
        conn.execute("UPDATE outbox.leases SET expires_at = now() - interval '1 second' WHERE job_id = %s", (job,))
        finisher = psycopg.connect(db_url)  # a SUCCEED in flight: it has locked the job row
        finisher.execute("SELECT 1 FROM outbox.jobs WHERE id = %s FOR NO KEY UPDATE", (job,))
        try:
            conn.execute("SET statement_timeout = '5s'")  # waiting would fail the test, not hang it
            assert conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall() == []
            assert conn.execute("SELECT count(*) FROM outbox.leases").fetchone() == (1,)
        finally:
            finisher.rollback()
            finisher.close()
        assert conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall() == [(job, "retry")]


def test_heartbeat_skips_a_lease_another_statement_holds(db_url: str) -> None:
    job = _started(db_url)
    _start(db_url, job)
    with psycopg.connect(db_url, autocommit=True) as conn:
        before = conn.execute("SELECT expires_at FROM outbox.leases WHERE job_id = %s", (job,)).fetchone()
        holder = psycopg.connect(db_url)
        holder.execute("SELECT 1 FROM outbox.leases WHERE job_id = %s FOR UPDATE", (job,))
        try:
            conn.execute("SET statement_timeout = '5s'")
            conn.execute(transitions.HEARTBEAT.pg, {"worker_id": "w", "lease_s": 300.0, "job_ids": [job]})
            assert conn.execute("SELECT expires_at FROM outbox.leases WHERE job_id = %s", (job,)).fetchone() == before
        finally:
            holder.rollback()
            holder.close()
        conn.execute(transitions.HEARTBEAT.pg, {"worker_id": "w", "lease_s": 300.0, "job_ids": [job]})
        after = conn.execute("SELECT expires_at FROM outbox.leases WHERE job_id = %s", (job,)).fetchone()
        assert after is not None and before is not None and after[0] > before[0]


def test_a_tier_override_moving_the_backlog_and_batched_starts_interleave_without_deadlock(db_url: str) -> None:
    """A worker's batch statement holds started jobs uncommitted while an operator's override moves
    the task's backlog (``MOVE_BACKLOG``: pending rows, then job rows in id order); the worker then
    starts more jobs of that task before either commits. Neither waits for the other in a cycle:
    both commit, no deadlock, and every job ends either running or moved."""

    with psycopg.connect(db_url) as conn:
        jobs = sorted(outbox.enqueue(conn, "sample.sync_calendar", args=[i]) for i in range(60))
    interleaved, late = jobs[::2], jobs[1::2][:10]  # the batches lock ids in order across the whole range
    many = {"worker_id": "w", "lease_s": 30.0}
    worker = psycopg.connect(db_url)
    out: dict[str, Any] = {}

    def move() -> None:
        try:
            with psycopg.connect(db_url) as conn:  # commits on exit
                out["moved"] = conn.execute(transitions.MOVE_BACKLOG.pg,
                                            {"task": "sample.sync_calendar", "tier": "high"}).fetchall()
        except BaseException as exc:  # noqa: BLE001 - re-raised by the test
            out["error"] = exc

    try:
        first = worker.execute(transitions.START_MANY.pg, {**many, "job_ids": interleaved,
                                                       "acked_early": [False] * 30, "tokens": [None] * 30}).fetchall()
        assert [r[1] for r in first] == ["run"] * 30
        mover = threading.Thread(target=move)
        mover.start()
        wait_until(lambda: _one(db_url, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                        "AND query LIKE %s", "%UPDATE outbox.pending p%") == 1,
                   timeout=10, what="MOVE_BACKLOG waiting for the batch's deleted pending rows")
        second = worker.execute(transitions.START_MANY.pg, {**many, "job_ids": late, "acked_early": [False] * 10,
                                                        "tokens": [None] * 10}).fetchall()
        # Each of these job rows is free (the mover holds only pending rows so far): started at once.
        assert [r[1] for r in second] == ["run"] * 10
        worker.commit()
        mover.join(15)
        assert not mover.is_alive() and "error" not in out, out.get("error")
    finally:
        worker.close()
    with psycopg.connect(db_url) as conn:
        status = dict(conn.execute("SELECT id, status FROM outbox.jobs").fetchall())
        pending = dict(conn.execute("SELECT job_id, tier FROM outbox.pending").fetchall())
    started = set(interleaved) | set(late)
    assert all(status[j] == "running" for j in started)
    assert all(pending.get(j) == "high" for j in jobs if j not in started)  # the rest of the backlog moved
    assert not set(interleaved) & set(pending)  # started by the first batch: its pending row is gone
