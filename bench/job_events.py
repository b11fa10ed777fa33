"""The hot path's cost with job events (issue #16), against the same statements without them.

``python -m bench.job_events [--url URL] [--jobs N] [--rounds R]``: in a scratch database migrated
to head (created next to ``--url``, default ``TIERBOX_DATABASE_URL``, dropped at the end), jobs of
``bench.noop`` are enqueued, then each is started (``START_ATTEMPT``) and succeeded (``SUCCEED``),
each its own transaction on one connection, as a worker's ledger records them. Two paths,
interleaved round by round so drift hits both alike:

* ``events``: as migrated, nobody streaming the jobs: the trigger ``record_job_event`` writes a
  ``status`` event at the start and an ``outcome`` event at the success, in the same transaction,
  and finds no row in ``outbox.job_watchers`` (so sends no NOTIFY);
* ``watched``: the same with every job watched (a row in ``outbox.job_watchers``, as when each
  job's stream is open): each event also sends ``pg_notify``;
* ``none``: the same statements with that trigger disabled (``ALTER TABLE ... DISABLE TRIGGER``
  between rounds): the ledger before revision 0012.

Only start and succeed (statement + commit) are timed; enqueueing is the same for both. It prints
the median milliseconds per job of each path, for start, succeed and both, and their ratio; and
the median milliseconds of one progress write (``INSERT_PROGRESS`` + commit, the handler's side).
"""

from __future__ import annotations

import argparse
import time
import uuid
from statistics import median
from typing import Any

import psycopg

import outbox
from bench import tasks  # noqa: F401 - registers bench.noop
from outbox import _queries as queries
from outbox import _transitions as transitions
from outbox.config import Settings
from tierbox import migrations


def _with_db(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def _round(conn: psycopg.Connection[Any], n: int, path: str) -> tuple[float, float, float]:
    """Seconds per job (start, succeed, one progress write) for ``n`` jobs through ``path``."""
    jobs = [outbox.enqueue(conn, "bench.noop", args=["", i]) for i in range(n)]
    if path == "watched":
        conn.execute(queries.WATCH_JOBS.pg, {"job_ids": jobs, "ttl_s": 3600.0})
    conn.commit()
    start = succeed = progress = 0.0
    for job in jobs:
        t0 = time.perf_counter()
        row = conn.execute(transitions.START_ATTEMPT.pg, {"job_id": job, "worker_id": "bench", "lease_s": 300.0,
                                                          "acked_early": False, "token": None}, prepare=True).fetchone()
        conn.commit()
        t1 = time.perf_counter()
        conn.execute(queries.INSERT_PROGRESS.pg, {"job_id": job, "attempt": 1, "fraction": 0.5, "message": "half",
                                                  "data": None}, prepare=True)
        conn.commit()
        t2 = time.perf_counter()
        done = conn.execute(transitions.SUCCEED.pg, {"job_id": job, "attempt": 1}, prepare=True).fetchone()
        conn.commit()
        t3 = time.perf_counter()
        assert row is not None and row[0] == "run" and done == (1,), (row, done)
        start += t1 - t0
        progress += t2 - t1
        succeed += t3 - t2
    written = conn.execute("SELECT count(*) FILTER (WHERE kind <> 'progress'), count(*) FILTER (WHERE kind = "
                           "'progress') FROM outbox.job_events WHERE job_id = ANY(%s)", (jobs,)).fetchone()
    conn.commit()
    # Each path did what it says: a start and an outcome event per job (none with the trigger off),
    # and every progress write.
    assert written == (0 if path == "none" else 2 * n, n), (path, written)
    return start / n, succeed / n, progress / n


def _path(conn: psycopg.Connection[Any], path: str) -> None:
    conn.execute(f"ALTER TABLE outbox.jobs {'DISABLE' if path == 'none' else 'ENABLE'} TRIGGER record_job_event")
    conn.commit()


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.job_events", description=__doc__)
    parser.add_argument("--url", default=None, help="a Postgres URL to create the scratch database next to")
    parser.add_argument("--jobs", type=int, default=50, help="jobs per path per round (small: paths interleave finely)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--async-commit", action="store_true",
                        help="synchronous_commit off: the statements' own cost, without the WAL flush of each commit")
    args = parser.parse_args(argv)
    admin = args.url or Settings.from_env().database_url
    name = f"tierbox_bench_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_db(admin, name)
        migrations.upgrade(url)
        results: dict[str, list[tuple[float, float, float]]] = {"events": [], "watched": [], "none": []}
        with psycopg.connect(url) as conn:
            if args.async_commit:
                conn.execute("SET synchronous_commit = off")
                conn.commit()
            for path in results:  # warm up: prepared statements, caches
                _path(conn, path)
                _round(conn, 50, path)
            order = list(results)
            for r in range(args.rounds):
                for path in order[r % 3:] + order[:r % 3]:  # each path first in turn
                    _path(conn, path)
                    results[path].append(_round(conn, args.jobs, path))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    med = {p: [median(v[i] for v in rows) * 1000 for i in range(3)] for p, rows in results.items()}
    both = {p: median((v[0] + v[1]) for v in rows) * 1000 for p, rows in results.items()}
    print(f"jobs per round {args.jobs}, rounds {args.rounds}, synchronous_commit "
          f"{'off' if args.async_commit else 'on'}; median ms per job (statement + commit)")
    print(f"{'path':8} {'start':>8} {'succeed':>8} {'both':>8}")
    for p in results:
        print(f"{p:8} {med[p][0]:8.3f} {med[p][1]:8.3f} {both[p]:8.3f}")
    for p in ("events", "watched"):
        print(f"ratio {p}/none: start {med[p][0] / med['none'][0]:.3f}, "
              f"succeed {med[p][1] / med['none'][1]:.3f}, both {both[p] / both['none']:.3f}")
    for p in ("events", "watched"):
        write = median(v[2] for v in results[p]) * 1000
        print(f"one progress write (INSERT_PROGRESS + commit), {p}: median {write:.3f} ms")


if __name__ == "__main__":
    main()
