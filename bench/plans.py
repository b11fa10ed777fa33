"""The hot by-id statements with the server's default plans and with generic plans (outbox._plans).

Run: ``python -m bench.plans [--partitions 10 47] [--jobs 500]``. For each partition count: a fresh
migrated database with that many day partitions of the job history (days before today, created as
``outbox._partitions`` does), ``--jobs`` jobs enqueued per round; then, on one psycopg connection
per round (autocommit, prepared statements, as the worker's ledger and the relay run them), each job
goes through ``START_MANY`` (a batch of one), ``MARK_PUBLISHED`` and ``SUCCEED_MANY``, one statement
at a time, timed on the client. Four rounds alternate ``plan_cache_mode = auto`` (the server's
default) and ``force_generic_plan``; the first 100 jobs of a round warm the plan cache and are not
counted. Prints p50 / p99 per statement and mode, and the ratio generic / auto of the medians of the
two rounds of each mode (same run, same database).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import statistics
import time
import uuid
from typing import Any

import psycopg

import outbox
from bench import tasks
from bench.harness import migrated_database
from outbox import _partitions, _transitions
from outbox._sql import Statement, run_async

WARM_UP = 100
MODES = ("auto", "force_generic_plan")


def _statements(job: uuid.UUID) -> list[tuple[str, Statement[Any], dict[str, Any]]]:
    return [("START_MANY", _transitions.START_MANY, {"job_ids": [job], "acked_early": [False], "tokens": [uuid.uuid4()],
                                                     "worker_id": "bench", "lease_s": 30.0}),
            ("MARK_PUBLISHED", _transitions.MARK_PUBLISHED, {"ids": [job]}),
            ("SUCCEED_MANY", _transitions.SUCCEED_MANY, {"job_ids": [job], "attempts": [1]})]


async def _round(url: str, mode: str, jobs: list[uuid.UUID]) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        await conn.execute(f"SET plan_cache_mode = {mode}")  # one of MODES, never input
        for i, job in enumerate(jobs):
            for name, stmt, params in _statements(job):
                began = time.perf_counter()
                await run_async(conn, stmt, params)
                if i >= WARM_UP:
                    times.setdefault(name, []).append((time.perf_counter() - began) * 1000)
    return times


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def measure(partitions: int, per_round: int) -> None:
    """Print the table for one partition count."""
    with migrated_database("plans") as url:
        with psycopg.connect(url) as conn:
            today = dt.datetime.now(dt.UTC).date()
            for back in range(2, 2 + max(0, partitions - len(_partitions.partitions(conn)))):
                _partitions.create_day(conn, today - dt.timedelta(days=back))
            count = len(_partitions.partitions(conn))
            rounds = [outbox.enqueue_many(conn, [outbox.job(tasks.noop) for _ in range(per_round)])
                      for _ in range(2 * len(MODES))]
            conn.commit()
        results: dict[str, dict[str, list[float]]] = {}  # mode -> statement -> per-round medians
        rows: dict[tuple[str, str], list[float]] = {}
        for i, jobs in enumerate(rounds):
            mode = MODES[i % len(MODES)]
            for stmt, values in asyncio.run(_round(url, mode, jobs)).items():
                results.setdefault(mode, {}).setdefault(stmt, []).append(statistics.median(values))
                rows.setdefault((stmt, mode), []).extend(values)
    print(f"\n{count} day partitions of outbox.jobs, {per_round - WARM_UP} timed jobs per round, "
          f"2 rounds per mode, alternating\n")
    print("| statement | auto p50 / p99 ms | generic p50 / p99 ms | generic / auto (p50) |")
    print("|---|---|---|---|")
    for stmt, _, _ in _statements(uuid.uuid4()):
        auto, generic = rows[(stmt, "auto")], rows[(stmt, "force_generic_plan")]
        ratio = statistics.median(results["force_generic_plan"][stmt]) / statistics.median(results["auto"][stmt])
        print(f"| {stmt} | {_pct(auto, 0.5):.2f} / {_pct(auto, 0.99):.2f} | "
              f"{_pct(generic, 0.5):.2f} / {_pct(generic, 0.99):.2f} | {ratio:.2f} |")


def main() -> None:
    """``python -m bench.plans``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--partitions", type=int, nargs="+", default=[10, 47],
                        help="day partitions of the history (at least what `migrate` creates)")
    parser.add_argument("--jobs", type=int, default=500, help="jobs per round (the first 100 warm up)")
    args = parser.parse_args()
    if args.jobs <= WARM_UP:
        parser.error(f"--jobs must be more than the {WARM_UP} warm-up jobs")
    print(f"Load average at start: {open('/proc/loadavg').read().split()[0]}")
    for partitions in args.partitions:
        measure(partitions, args.jobs)


if __name__ == "__main__":
    main()
