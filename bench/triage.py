"""The failure path's cost with fingerprints and failure groups (issue #14), against the path before them.

``python -m bench.triage [--url URL] [--failures N] [--rounds R]``: on a migrated database (default
``TIERBOX_DATABASE_URL``), jobs of ``bench.noop`` are enqueued and started through the ledger's own
statements, then each attempt fails through one of three paths, interleaved round by round so drift
hits all alike:

* ``before``: the exception captured as revision 0008 did (type, message, traceback) and recorded
  with revision 0008's RETRY statement (kept below, verbatim);
* ``inline``: ``ErrorInfo.of`` (adds the fingerprint: message normalised, application frames) and
  revision 0009's RETRY (stores the fingerprint and upserts the group's row in a CTE of its own; kept
  below, verbatim);
* ``after``: ``ErrorInfo.of`` and today's RETRY (the same upsert, through the SQL function
  ``outbox.record_failure_group`` that every failure path shares since revision 0010).

Every failure is its own transaction on one connection, as a worker's ledger records it. Only the
capture and the RETRY statement are timed; enqueue and start are the same for all. It prints the
median milliseconds per failure of each path and their ratio, for the Python capture alone and for
capture + statement, against ``before`` and against ``inline``.
"""

from __future__ import annotations

import argparse
import time
import traceback as tb
from statistics import median
from typing import Any

import psycopg

import outbox
from bench import tasks  # noqa: F401 - registers bench.noop
from outbox import _transitions as transitions
from outbox._failure import MAX_ERROR_MESSAGE_CHARS, MAX_TRACEBACK_CHARS, ErrorInfo
from outbox._logs import clip
from outbox._sql import Statement
from outbox.config import Settings

# Revision 0008's RETRY, verbatim: the baseline (it runs unchanged on the 0009 schema).
RETRY_0008 = Statement("bench.retry_0008", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
locked AS MATERIALIZED (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs
    SET status = 'retrying', available_at = (SELECT at FROM ts) + make_interval(secs => CAST(:delay_s AS float8)),
        last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
      AND (SELECT count(*) FROM locked) >= 0  -- evaluated before the job row is locked
    RETURNING id, tier, priority, available_at
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), p AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
    FROM j LEFT JOIN outbox.tiers t ON t.name = j.tier
    ON CONFLICT (job_id) DO UPDATE SET available_at = EXCLUDED.available_at
)
SELECT count(*) FROM j
""")

# Revision 0009's RETRY, verbatim: the group upsert written inline (runs unchanged on the 0010 schema).
RETRY_0009 = Statement("bench.retry_0009", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
locked AS MATERIALIZED (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs
    SET status = 'retrying', available_at = (SELECT at FROM ts) + make_interval(secs => CAST(:delay_s AS float8)),
        last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
      AND (SELECT count(*) FROM locked) >= 0  -- evaluated before the job row is locked
    RETURNING id, task, tier, priority, available_at
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback, fingerprint = CAST(:fingerprint AS text)
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
),
g AS (
    INSERT INTO outbox.failure_groups AS fg (fingerprint, error_type, message, sample_message, frames, tasks, tiers,
                                             outcomes, reasons, failed_attempts, dead_letters, first_seen, last_seen,
                                             sample_job_ids)
    SELECT CAST(:fingerprint AS text), CAST(:error_type AS text), CAST(:normalized AS text),
           CAST(:error_message AS text), CAST(:frames AS text[]), array_remove(ARRAY[j.task], NULL),
           ARRAY[j.tier], array_remove(ARRAY[CAST(:outcome AS text)], NULL), array_remove(ARRAY[NULL::text], NULL),
           1, 0, clock_timestamp(), clock_timestamp(), array_remove(ARRAY[j.id], NULL)
    FROM j
    WHERE CAST(:fingerprint AS text) IS NOT NULL
    ON CONFLICT (fingerprint) DO UPDATE SET
        failed_attempts = fg.failed_attempts + EXCLUDED.failed_attempts,
        dead_letters = fg.dead_letters + EXCLUDED.dead_letters,
        last_seen = EXCLUDED.last_seen,
        sample_message = EXCLUDED.sample_message,
        tasks = CASE WHEN EXCLUDED.tasks <@ fg.tasks THEN fg.tasks ELSE (fg.tasks || EXCLUDED.tasks)[1:20] END,
        tiers = CASE WHEN EXCLUDED.tiers <@ fg.tiers THEN fg.tiers ELSE (fg.tiers || EXCLUDED.tiers)[1:20] END,
        outcomes = CASE WHEN EXCLUDED.outcomes <@ fg.outcomes THEN fg.outcomes
                        ELSE (fg.outcomes || EXCLUDED.outcomes)[1:20] END,
        reasons = CASE WHEN EXCLUDED.reasons <@ fg.reasons THEN fg.reasons
                       ELSE (fg.reasons || EXCLUDED.reasons)[1:20] END,
        sample_job_ids = CASE WHEN EXCLUDED.sample_job_ids <@ fg.sample_job_ids THEN fg.sample_job_ids
                              ELSE (EXCLUDED.sample_job_ids || fg.sample_job_ids)[1:10] END,
        status = CASE WHEN fg.status = 'resolved' THEN 'open' ELSE fg.status END,
        regressed_at = CASE WHEN fg.status = 'resolved' THEN EXCLUDED.last_seen ELSE fg.regressed_at END
), p AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
    FROM j LEFT JOIN outbox.tiers t ON t.name = j.tier
    ON CONFLICT (job_id) DO UPDATE SET available_at = EXCLUDED.available_at
)
SELECT count(*) FROM j""")


def load_order(order_id: int) -> None:
    """The failing 'handler': a not-found error a few frames deep, as application code raises it."""
    lookup(order_id)


def lookup(order_id: int) -> None:
    raise LookupError(f"order {order_id} not found for customer cust-{order_id % 97}@example.com")


def _caught(n: int) -> Exception:
    try:
        load_order(n)
    except LookupError as exc:
        return exc
    raise AssertionError("load_order did not raise")


def capture_before(exc: BaseException) -> dict[str, Any]:
    """What revision 0008's ErrorInfo.of captured: type, bounded message, bounded traceback."""
    text = "".join(tb.format_exception(exc))
    if len(text) > MAX_TRACEBACK_CHARS:
        text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
    return {"error_type": type(exc).__qualname__, "error_message": clip(str(exc), MAX_ERROR_MESSAGE_CHARS),
            "traceback": text}


def _started_jobs(conn: psycopg.Connection[Any], n: int) -> list[Any]:
    """``n`` committed jobs, each with its first attempt started (running, lease taken)."""
    jobs = [outbox.enqueue(conn, "bench.noop", args=["", i]) for i in range(n)]
    conn.commit()
    for job in jobs:
        conn.execute(transitions.START_ATTEMPT.pg, {"job_id": job, "worker_id": "bench", "lease_s": 300.0,
                                                    "acked_early": False, "token": None})
    conn.commit()
    return jobs


def _round(conn: psycopg.Connection[Any], path: str, n: int) -> tuple[float, float]:
    """(capture seconds, capture + statement seconds) for ``n`` failures through ``path``."""
    jobs = _started_jobs(conn, n)
    excs = [_caught(i) for i in range(n)]
    capture = total = 0.0
    for job, exc in zip(jobs, excs, strict=True):
        t0 = time.perf_counter()
        params = capture_before(exc) if path == "before" else ErrorInfo.of(exc).params()
        t1 = time.perf_counter()
        stmt = {"before": RETRY_0008, "inline": RETRY_0009, "after": transitions.RETRY}[path]
        row = conn.execute(stmt.pg, {"job_id": job, "attempt": 1, "delay_s": 3600.0, "outcome": "failed", **params},
                           prepare=True).fetchone()
        conn.commit()
        t2 = time.perf_counter()
        assert row == (1,), row
        capture += t1 - t0
        total += t2 - t0
    return capture / n, total / n


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.triage", description=__doc__)
    parser.add_argument("--url", default=None, help="a migrated database (default: TIERBOX_DATABASE_URL)")
    parser.add_argument("--failures", type=int, default=500, help="failures per path per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    url = args.url or Settings.from_env().database_url
    results: dict[str, list[tuple[float, float]]] = {"before": [], "inline": [], "after": []}
    with psycopg.connect(url) as conn:
        for path in results:  # warm up: prepared statements, caches, the group's row
            _round(conn, path, 50)
        order = list(results)
        for r in range(args.rounds):
            for path in order[r % 3:] + order[:r % 3]:  # each path first in turn: drift hits all alike
                results[path].append(_round(conn, path, args.failures))
    cap = {p: median(c for c, _ in v) * 1000 for p, v in results.items()}
    tot = {p: median(t for _, t in v) * 1000 for p, v in results.items()}
    print(f"{args.rounds} rounds x {args.failures} failures per path (median of rounds), ms per failure:")
    print(f"  capture only        before {cap['before']:.4f}  after {cap['after']:.4f}  "
          f"ratio {cap['after'] / cap['before']:.2f}")
    print(f"  capture + RETRY     before {tot['before']:.4f}  after {tot['after']:.4f}  "
          f"ratio {tot['after'] / tot['before']:.2f}")
    print(f"  upsert as function  inline {tot['inline']:.4f}  after {tot['after']:.4f}  "
          f"ratio {tot['after'] / tot['inline']:.2f}  (0009's inline upsert vs outbox.record_failure_group)")


if __name__ == "__main__":
    main()
