"""The operator views of revision 0002: what they say, and that they read through indexes, not history."""

from __future__ import annotations

import datetime as dt
import importlib
import uuid
from types import ModuleType
from typing import Any

import psycopg
import pytest

import outbox
import tierbox.ops.queries
from bench import ui_render as bench_ui
from outbox import _partitions
from outbox._sql import Statement
from outbox.registry import registry
from tests.factories import dead_job, undecodable_message
from tests.ledger.test_statements import positional

API_STATEMENTS = [(f"ops.queries.{k}", v) for k, v in sorted(vars(tierbox.ops.queries).items()) if isinstance(v, Statement)]


def rows(conn: psycopg.Connection, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def finished_job(conn: psycopg.Connection, task: str, outcomes: list[str], *, status: str,
                 wait: str = "2 seconds") -> uuid.UUID:
    """A job with the given attempts, as the worker records them."""
    job = outbox.enqueue(conn, task, args=[1])
    conn.execute("DELETE FROM outbox.pending WHERE job_id = %s", (job,))
    for n, outcome in enumerate(outcomes, start=1):
        conn.execute("""INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome,
                            error_type) VALUES (%s, %s, 'w1', now() + CAST(%s AS interval) * %s,
                            now() + CAST(%s AS interval) * %s + interval '1 ms', %s, %s)""",
                     (job, n, wait, n, wait, n, outcome, None if outcome == "succeeded" else "RuntimeError"))
    conn.execute("UPDATE outbox.jobs SET status = %s, attempts = %s, started_at = now(), finished_at = now() "
                 "WHERE id = %s", (status, len(outcomes), job))
    return job


@pytest.mark.parametrize(("attr", "stmt"), API_STATEMENTS, ids=[a for a, _ in API_STATEMENTS])
def test_api_statement_prepares_and_plans(attr: str, stmt: Statement, tx: psycopg.Connection) -> None:
    sql, names = positional(stmt)
    tx.execute(f"PREPARE api_stmt AS {sql}")
    types = rows(tx, "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'api_stmt'")[0][0]
    assert "unknown" not in types, (attr, types)
    assert rows(tx, f"EXPLAIN EXECUTE api_stmt{'(' + ', '.join(['NULL'] * len(names)) + ')' if names else ''}")
    tx.execute("DEALLOCATE api_stmt")


def test_api_statement_names_are_unique_and_prefixed() -> None:
    names = [s.name for _, s in API_STATEMENTS]
    assert len(names) == len(set(names)) and all(n.startswith("ops.") for n in names)
    assert isinstance(tierbox.ops.queries, ModuleType)


def test_tier_health_counts_live_jobs_outcomes_waits_and_slo(tx: psycopg.Connection) -> None:
    outbox.enqueue(tx, "sample.webhook", args=["due"])
    outbox.enqueue(tx, "sample.webhook", args=["later"], delay=3600)
    tx.execute("UPDATE outbox.pending SET available_at = now() - interval '45 seconds' "
               "WHERE available_at <= now()")  # a relay 45 s behind: past high's 30 s SLO
    running = outbox.enqueue(tx, "sample.webhook", args=["running"])
    tx.execute("DELETE FROM outbox.pending WHERE job_id = %s", (running,))
    tx.execute("UPDATE outbox.jobs SET status = 'running', started_at = now() WHERE id = %s", (running,))
    tx.execute("INSERT INTO outbox.leases (job_id, attempt, worker_id, expires_at) "
               "VALUES (%s, 1, 'w', now() - interval '1 minute')", (running,))
    finished_job(tx, "sample.webhook", ["succeeded"], status="succeeded")
    finished_job(tx, "sample.webhook", ["failed", "succeeded"], status="succeeded")
    dead_job(tx, "sample.webhook")
    [row] = rows(tx, "SELECT pending, due, oldest_due_age_s > 40, published, running, stuck, succeeded_5m, "
                     "failed_5m, dead_5m, succeeded_1h, wait_p50_s IS NOT NULL, slo_breached "
                     "FROM outbox.tier_health WHERE tier = 'high'")
    # failed_5m: the retried job's failed attempt and the dead job's four (it is run to its dead letter).
    assert row == (2, 1, True, 0, 1, 1, 2, 5, 1, 2, True, True)
    assert rows(tx, "SELECT count(*) FILTER (WHERE slo_breached) FROM outbox.tier_health") == [(1,)]
    # Revision 0016: every attempt started this minute counts (1 + 2 + the dead job's 4), and the p99
    # wait is over the same first attempts as the p50 and p95.
    [(started, p99_ok)] = rows(tx, "SELECT started_1m, wait_p99_s >= wait_p95_s AND wait_p95_s >= wait_p50_s "
                                    "FROM outbox.tier_health WHERE tier = 'high'")
    assert (started, p99_ok) == (7, True)


def test_failures_show_the_last_attempt_and_state(tx: psycopg.Connection) -> None:
    job = dead_job(tx, "sample.invoice", reason="timeout")  # every attempt past its timeout_s
    undecodable_message(tx, b"garbage", tier="high")
    task = registry.get("sample.invoice")
    assert task is not None
    attempts = task.max_retries + 1
    got = rows(tx, "SELECT reason, error_type, state, last_attempt, last_outcome, raw_body_bytes "
                   "FROM outbox.failures ORDER BY id")
    # error_type: the worker's timeout error, and the envelope decoder's error for the garbage body.
    assert got == [("timeout", "AttemptTimeout", "open", attempts, "timeout", None),
                   ("undecodable", "DecodeError", "open", None, None, 7)]
    outbox.redrive(tx, job)
    assert rows(tx, "SELECT state FROM outbox.failures WHERE job_id = %s", job) == [("redriven",)]


def test_failure_summary_groups_by_tier_task_reason_and_error_type(tx: psycopg.Connection) -> None:
    for _ in range(2):
        dead_job(tx, "sample.webhook", failed_ago="10 minutes")
    dead_job(tx, "sample.webhook", failed_ago="5 hours")
    outbox.discard(tx, dead_job(tx, "sample.webhook", reason="non_retryable", failed_ago="2 days"))
    dead_job(tx, "sample.webhook", failed_ago="30 days")  # outside the 7-day window
    got = rows(tx, "SELECT tier, task, reason, error_type, last_1h, last_24h, last_7d, open "
                   "FROM outbox.failure_summary ORDER BY reason")
    assert got == [("high", "sample.webhook", "failed", "RuntimeError", 2, 3, 3, 3),
                   ("high", "sample.webhook", "non_retryable", "Reject", 0, 0, 1, 0)]


def test_job_timeline_tells_the_story_in_order(tx: psycopg.Connection) -> None:
    # Written in SQL on purpose: the order is asserted on timestamps set 20 s apart, which a real run
    # (all within the same millisecond) cannot give.
    job = outbox.enqueue(tx, "sample.invoice", args=[1])
    tx.execute("DELETE FROM outbox.pending WHERE job_id = %s", (job,))
    for n in (1, 2):  # two failed attempts, 20 s apart, all in the past (the redrive happens at now())
        tx.execute("""INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
                      VALUES (%s, %s, 'w1', now() - interval '60 seconds' + %s * interval '20 seconds',
                              now() - interval '59 seconds' + %s * interval '20 seconds', 'failed')""",
                   (job, n, n, n))
    tx.execute("UPDATE outbox.jobs SET status = 'dead', attempts = 2, enqueued_at = now() - interval '1 minute', "
               "published_at = now() - interval '59.5 seconds', finished_at = now() - interval '5 seconds' "
               "WHERE id = %s", (job,))
    tx.execute("""INSERT INTO outbox.dead_letters (job_id, task, tier, payload, reason, attempts, failed_at)
                  VALUES (%s, 'sample.invoice', 'normal', '{}', 'failed', 2, now() - interval '5 seconds')""",
               (job,))
    new = outbox.redrive(tx, job, by="alice", reason="fixed")
    events = rows(tx, "SELECT event, attempt, detail FROM outbox.job_timeline WHERE job_id = %s "
                      "ORDER BY date_trunc('milliseconds', at), seq, attempt", job)
    assert [(e[0], e[1]) for e in events] == [
        ("enqueued", None), ("published", None), ("attempt_started", 1), ("attempt_failed", 1),
        ("attempt_started", 2), ("attempt_failed", 2), ("dead_lettered", 2), ("finished_dead", 2), ("redriven", None)]
    assert events[-1][2] == {"by": "alice", "reason": "fixed", "new_job_id": str(new)}
    assert events[0][2]["task"] == "sample.invoice"


def _plan(conn: psycopg.Connection, sql: str) -> str:
    return "\n".join(r[0] for r in rows(conn, "EXPLAIN " + sql))


def test_views_read_through_indexes_on_a_large_history(db_url: str) -> None:
    """50k finished jobs: no view nor DLQ page scans jobs, attempts or dead_letters."""
    with psycopg.connect(db_url) as conn:
        # Bulk SQL on purpose: 50k jobs (5k dead letters) through the real path would take minutes.
        conn.execute("""
            INSERT INTO outbox.jobs (id, task, tier, priority, payload, status, attempts, max_retries,
                                     enqueued_at, available_at, started_at, finished_at)
            SELECT gen_random_uuid(), 'sample.t', (ARRAY['high','normal','low'])[1 + i % 3], 5, '{}',
                   CASE WHEN i % 10 = 0 THEN 'dead' ELSE 'succeeded' END, 1, 3,
                   now() - make_interval(secs => i * 60), now() - make_interval(secs => i * 60),
                   now() - make_interval(secs => i * 60 - 1), now() - make_interval(secs => i * 60 - 2)
            FROM generate_series(1, 50000) i""")
        conn.execute("""INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
                        SELECT id, 1, 'w', started_at, finished_at, 'succeeded' FROM outbox.jobs""")
        conn.execute("""INSERT INTO outbox.dead_letters (job_id, task, tier, payload, reason, failed_at, redriven_at,
                                                         new_job_id)
                        SELECT id, task, tier, payload, 'failed', finished_at, finished_at, gen_random_uuid()
                        FROM outbox.jobs WHERE status = 'dead'""")
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE outbox.jobs, outbox.attempts, outbox.dead_letters, outbox.leases, outbox.pending")
        for sql in ["SELECT * FROM outbox.tier_health", "SELECT * FROM outbox.failure_summary",
                    "SELECT * FROM outbox.failures WHERE redriven_at IS NULL AND discarded_at IS NULL "
                    "ORDER BY failed_at DESC, id DESC LIMIT 50",
                    f"SELECT * FROM outbox.job_timeline WHERE job_id = '{uuid.uuid4()}'"]:
            plan = _plan(conn, sql)
            for table in ("jobs", "attempts", "dead_letters"):
                # The rows have uuid4 ids: they live in the default partitions (revision 0017). The empty
                # day partitions are scanned at a cost of 0 (no page): not what this test is about.
                for scanned in (table, f"{table}_default"):
                    assert f"Seq Scan on {scanned} " not in plan, f"{sql}\n{plan}"


def _tier_health_query() -> str:
    """The query inside ``outbox.tier_health_rows()`` (revision 0018), to plan it: a function's plan
    is not shown by EXPLAIN of the view."""
    module = importlib.import_module("tierbox.migrations.versions.0018_tier_health_lookups")
    function: str = module._function_and_view()[0]
    return function.split("$$\n", 1)[1].rsplit("\n$$", 1)[0]


def test_tier_health_looks_jobs_up_by_id_on_a_partitioned_history_and_without_jit(db_url: str) -> None:
    """Revision 0018: on a history spread over day partitions (UUIDv7 ids, as real jobs have), the
    recent attempts' and leases' jobs are found by index, not by a hash join over a sequential scan
    of every partition (2.08 s behind the Tiers screen on 2 M jobs), and the view runs without JIT."""
    with psycopg.connect(db_url) as conn:
        today = dt.datetime.now(dt.UTC).date()
        for back in range(bench_ui.HISTORY_DAYS + 1):
            _partitions.create_day(conn, today - dt.timedelta(days=back))
        # Bulk SQL on purpose (the dashboard benchmark's fill): 30k jobs with their attempts, a few of
        # them started in the view's last 15 minutes.
        conn.execute(bench_ui.FILL, {"n": 30_000, "offset": 0})
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE outbox.jobs, outbox.attempts, outbox.leases, outbox.pending")
        filled = [name for (name,) in rows(conn, "SELECT tableoid::regclass::text FROM outbox.jobs GROUP BY 1")]
        assert len(filled) > 20  # the history really is spread over day partitions
        plan = _plan(conn, _tier_health_query())
        for partition in filled:
            assert f"Seq Scan on {partition.removeprefix('outbox.')} " not in plan, plan
        assert rows(conn, "SELECT proconfig FROM pg_proc WHERE oid = 'outbox.tier_health_rows()'::regprocedure") \
            == [(["jit=off"],)]
        assert len(rows(conn, "SELECT * FROM outbox.tier_health")) == len(rows(conn, "SELECT 1 FROM outbox.tiers"))
