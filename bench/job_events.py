"""The hot path's cost with job events (issue #16), against the same statements without them.

``python -m bench.job_events [--url URL] [--jobs N] [--rounds R]``: in a scratch database migrated
to head (created next to ``--url``, default ``TIERBOX_DATABASE_URL``, dropped at the end), jobs of
``bench.noop`` are enqueued, then each is started (``START_ATTEMPT``) and succeeded (``SUCCEED``),
each its own transaction on one connection, as a worker's ledger records them. Two paths,
interleaved round by round so drift hits both alike:

* ``events``: as migrated: the trigger ``record_job_event`` writes a ``status`` event at the start
  and an ``outcome`` event at the success, each with ``pg_notify``, in the same transaction;
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


def _round(conn: psycopg.Connection[Any], n: int) -> tuple[float, float, float]:
    """Seconds per job (start, succeed, one progress write) for ``n`` jobs."""
    jobs = [outbox.enqueue(conn, "bench.noop", args=["", i]) for i in range(n)]
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
    return start / n, succeed / n, progress / n


def _trigger(conn: psycopg.Connection[Any], enabled: bool) -> None:
    conn.execute(f"ALTER TABLE outbox.jobs {'ENABLE' if enabled else 'DISABLE'} TRIGGER record_job_event")
    conn.commit()


def main(argv: list[str] | None = None) -> None:
    """Run the rounds and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m bench.job_events", description=__doc__)
    parser.add_argument("--url", default=None, help="a Postgres URL to create the scratch database next to")
    parser.add_argument("--jobs", type=int, default=400, help="jobs per path per round")
    parser.add_argument("--rounds", type=int, default=6)
    args = parser.parse_args(argv)
    admin = args.url or Settings.from_env().database_url
    name = f"tierbox_bench_events_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = _with_db(admin, name)
        migrations.upgrade(url)
        results: dict[str, list[tuple[float, float, float]]] = {"events": [], "none": []}
        with psycopg.connect(url) as conn:
            for path in results:  # warm up: prepared statements, caches
                _trigger(conn, path == "events")
                _round(conn, 50)
            order = list(results)
            for r in range(args.rounds):
                for path in order[r % 2:] + order[:r % 2]:  # each path first in turn
                    _trigger(conn, path == "events")
                    results[path].append(_round(conn, args.jobs))
            _trigger(conn, True)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    med = {p: [median(v[i] for v in rows) * 1000 for i in range(3)] for p, rows in results.items()}
    both = {p: median((v[0] + v[1]) for v in rows) * 1000 for p, rows in results.items()}
    print(f"jobs per round {args.jobs}, rounds {args.rounds}; median ms per job (statement + commit)")
    print(f"{'path':8} {'start':>8} {'succeed':>8} {'both':>8}")
    for p in results:
        print(f"{p:8} {med[p][0]:8.3f} {med[p][1]:8.3f} {both[p]:8.3f}")
    print(f"ratio events/none: start {med['events'][0] / med['none'][0]:.3f}, "
          f"succeed {med['events'][1] / med['none'][1]:.3f}, both {both['events'] / both['none']:.3f}")
    write = median(v[2] for v in results["events"]) * 1000
    print(f"one progress write (INSERT_PROGRESS + commit): median {write:.3f} ms")


if __name__ == "__main__":
    main()
