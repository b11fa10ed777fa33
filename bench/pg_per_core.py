"""Postgres CPU per job: where one primary stops being enough (docs/cluster.md, "Postgres beyond one machine").

Run: ``python -m bench.pg_per_core [--jobs 5000] [--workers 2]`` (root: starts a Postgres instance
of its own with ``initdb``, as bench/broker_cost.py does, so the CPU counted is this run's alone;
RabbitMQ and Redis are the shared ones, under a unique queue prefix).

Enqueues ``--jobs`` ``bench.noop_sync`` jobs in transactions of 10 (as an application would, one
business transaction each), and runs them through one relay and ``--workers`` pools. Counts the CPU
time (user + system, from /proc) of every process of the Postgres instance, from the first enqueue
until the last job succeeded: the whole ledger's cost per job (enqueue, claim, publish mark, start,
success, the lease heartbeats and the reaper's scans). Jobs per second one core of Postgres carries
is 1 / (CPU seconds per job); wall-clock throughput is printed beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from pathlib import Path

import psycopg

from bench.broker_cost import Fleet, postgres
from bench.harness import delete_broker_objects

ROOT = Path(__file__).resolve().parent.parent
TICK = os.sysconf("SC_CLK_TCK")


def postgres_cpu_s(port: int) -> float:
    """CPU seconds used so far by the Postgres instance listening on ``port`` (postmaster and children)."""
    master = None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd and cmd[0].endswith(b"postgres") and f"-p {port}".encode() in b" ".join(cmd):
            master = pid
    if master is None:
        raise RuntimeError(f"no postmaster on port {port}")
    total = 0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if pid == master or fields[1] == master:  # fields[1] is the parent pid
            total += int(fields[11]) + int(fields[12]) + int(fields[13]) + int(fields[14])  # incl. reaped children
    return total / TICK


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    import outbox
    from bench import tasks  # noqa: F401 - registers the bench tasks
    from outbox.config import Settings

    with postgres() as db:
        port = int(db.rsplit(":", 1)[1].split("/")[0])
        settings = Settings(database_url=db, queue_prefix=f"pgcore{uuid.uuid4().hex[:6]}.", app="bench.tasks")
        env = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_")}
        env.update({f"TIERBOX_{f.upper()}": str(getattr(settings, f)) for f in settings.__struct_fields__
                    if getattr(settings, f) is not None})
        env["PYTHONPATH"] = str(ROOT)
        import tempfile

        fleet = Fleet(Path(tempfile.mkdtemp(prefix="tierbox-pgcore-")))
        try:
            fleet.start([sys.executable, "-m", "tierbox.cli", "relay"], env, "relay")
            for i in range(args.workers):
                fleet.start([sys.executable, "-m", "tierbox.cli", "worker", "--pool", "urgent"], env, f"worker-{i}")
            fleet.wait_logs("action=", 300)
            time.sleep(5)
            cpu0, t0 = postgres_cpu_s(port), time.monotonic()
            with psycopg.connect(db) as conn:
                for start in range(0, args.jobs, 10):
                    batch = min(10, args.jobs - start)
                    outbox.enqueue_many(conn, [outbox.job("bench.noop_sync") for _ in range(batch)])
                    conn.commit()
            while True:
                with psycopg.connect(db) as conn:
                    row = conn.execute("SELECT count(*) FROM outbox.jobs WHERE status <> 'succeeded'").fetchone()
                if row and row[0] == 0:
                    break
                time.sleep(0.5)
            cpu, wall = postgres_cpu_s(port) - cpu0, time.monotonic() - t0
        finally:
            fleet.stop()
            asyncio.run(delete_broker_objects(settings))  # the shared node keeps none of this run's queues
    per_job_us = cpu / args.jobs * 1e6
    print(f"{args.jobs} jobs (enqueued 10 per transaction) through 1 relay and {args.workers} pools in {wall:.1f} s "
          f"({args.jobs / wall:.0f} jobs/s wall clock)")
    print(f"Postgres CPU: {cpu:.2f} s = {per_job_us:.0f} µs per job -> {1e6 / per_job_us:.0f} jobs/s per core of "
          f"Postgres (enqueue to success)")


if __name__ == "__main__":
    main()
