"""The failure path's cost with fingerprints and failure groups (issue #14), against the path before them.

``python -m bench.triage [--url URL] [--failures N] [--rounds R]``: on a migrated database (default
``TIERBOX_DATABASE_URL``), jobs of ``bench.noop`` are enqueued and started through the ledger's own
statements, then each attempt fails through one of two paths, interleaved round by round so drift
hits both alike:

* ``before``: the exception captured as revision 0008 did (type, message, traceback) and recorded
  with revision 0008's RETRY statement (kept below, verbatim);
* ``after``: ``ErrorInfo.of`` (adds the fingerprint: message normalised, application frames) and
  today's RETRY (stores the fingerprint and upserts the group's row in the same statement).

Every failure is its own transaction on one connection, as a worker's ledger records it. Only the
capture and the RETRY statement are timed; enqueue and start are the same for both. It prints the
median milliseconds per failure of each path and their ratio, for the Python capture alone and for
capture + statement.
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
        stmt = RETRY_0008 if path == "before" else transitions.RETRY
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
    results: dict[str, list[tuple[float, float]]] = {"before": [], "after": []}
    with psycopg.connect(url) as conn:
        _round(conn, "after", 50)  # warm up: prepared statements, caches, the group's row
        _round(conn, "before", 50)
        for r in range(args.rounds):
            for path in (("before", "after") if r % 2 == 0 else ("after", "before")):
                results[path].append(_round(conn, path, args.failures))
    cap = {p: median(c for c, _ in v) * 1000 for p, v in results.items()}
    tot = {p: median(t for _, t in v) * 1000 for p, v in results.items()}
    print(f"{args.rounds} rounds x {args.failures} failures per path (median of rounds), ms per failure:")
    print(f"  capture only        before {cap['before']:.4f}  after {cap['after']:.4f}  "
          f"ratio {cap['after'] / cap['before']:.2f}")
    print(f"  capture + RETRY     before {tot['before']:.4f}  after {tot['after']:.4f}  "
          f"ratio {tot['after'] / tot['before']:.2f}")


if __name__ == "__main__":
    main()
