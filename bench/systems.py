"""The three systems under test behind one small interface: produce jobs, send a probe, count completions.

Each is started against the same run's services with the same concurrency
(the urgent pool's 8 slots), and its processes belong to the caller's
:class:`~bench.harness.Procs`, so they are stopped in the caller's ``finally``.
"""

from __future__ import annotations

import uuid
from typing import Any, Protocol

import psycopg

import outbox
from bench import tasks  # noqa: F401 - registers the task names enqueue resolves
from bench.harness import Proc, Procs, execute, redis_client, scalar, wait_until
from bench.peers import celery_client, install_procrastinate, start_celery, start_procrastinate
from outbox.config import Settings

#: Jobs per producer transaction / batch call (all three systems batch the same way).
BATCH = 500
#: Worker slots of every system (the urgent pool's concurrency in the default topology).
CONCURRENCY = 8


class System(Protocol):
    """What the throughput and latency benchmarks need from a system under test."""

    name: str
    procs: list[Proc]

    def produce(self, n: int) -> None:
        """Commit ``n`` no-op jobs, in batches of :data:`BATCH`."""

    def probe(self, key: str, token: str) -> None:
        """Commit one probe job that records its start time under ``key``; return once committed."""

    def completed(self) -> int:
        """No-op jobs completed (and, where the system records outcomes, recorded) since :meth:`reset`."""

    def reset(self) -> None:
        """Forget finished jobs (called while idle)."""


class Tierbox:
    """Relay + one worker pool (``urgent``: critical and high tiers, 8 slots)."""

    name = "tierbox"

    def __init__(self, settings: Settings, procs: Procs, stack: Any, pool: str = "urgent",
                 task: str = "bench.noop") -> None:
        self.settings = settings
        self.task = task
        self.worker = procs.tierbox(settings, "worker", "--pool", pool)
        self.relay = procs.tierbox(settings, "relay")
        self.procs = [self.relay, self.worker]
        self.conn = psycopg.connect(settings.psycopg_url)
        stack.callback(self.conn.close)

    def produce(self, n: int) -> None:
        """``enqueue_many`` in committed batches."""
        for start in range(0, n, BATCH):
            with self.conn.transaction():
                outbox.enqueue_many(self.conn, [outbox.job(self.task, args=["", i])
                                                for i in range(start, min(n, start + BATCH))])

    def probe(self, key: str, token: str) -> None:
        """One CRITICAL job in its own transaction."""
        with self.conn.transaction():
            outbox.enqueue(self.conn, "bench.stamp_critical", args=[key, token])

    def completed(self) -> int:
        """Jobs whose success is committed in the ledger."""
        return int(scalar(self.settings.psycopg_url, "SELECT count(*) FROM outbox.jobs WHERE status = 'succeeded'"))

    def reset(self) -> None:
        """Truncate the ledger."""
        execute(self.settings.psycopg_url, "TRUNCATE outbox.jobs CASCADE")


class Celery:
    """A Celery worker, thread pool, ``confirm_publish``, ``acks_late``, prefetch multiplier 1."""

    name = "celery"

    def __init__(self, settings: Settings, procs: Procs, stack: Any, start: bool = True) -> None:
        stack.enter_context(celery_client(settings))
        from bench import celery_app

        self.settings = settings
        self.app = celery_app
        self.key = f"bench:{uuid.uuid4().hex}"
        self.redis = redis_client()
        stack.callback(self.redis.delete, self.key)
        self.procs: list[Proc] = []
        if start:
            self.start(procs)

    def start(self, procs: Procs, ping: bool = True) -> None:
        """Start the worker and wait until a task has gone round (at WARNING level it prints nothing).

        With ``ping`` false the first task already queued is the sign of life.
        """
        self.procs.append(start_celery(procs, self.settings, CONCURRENCY))
        before = self.completed()
        if ping:
            self.app.noop.apply_async(args=[self.key])
        wait_until(lambda: self.completed() > before, 60, 0.05, "celery worker ready")

    def produce(self, n: int) -> None:
        """``apply_async`` per job (each publish waits for its confirm: Celery's way)."""
        noop = self.app.noop
        for _ in range(n):
            noop.apply_async(args=[self.key])

    def probe(self, key: str, token: str) -> None:
        """One ``stamp`` task."""
        self.app.stamp.apply_async(args=[key, token])

    def completed(self) -> int:
        """Runs counted in Redis."""
        return int(self.redis.get(self.key) or 0)

    def reset(self) -> None:
        """Zero the counter."""
        self.redis.set(self.key, 0)


class Procrastinate:
    """A procrastinate worker with 8 slots on the same Postgres; jobs are kept (status succeeded)."""

    name = "procrastinate"

    def __init__(self, settings: Settings, procs: Procs, stack: Any) -> None:
        from procrastinate import App, SyncPsycopgConnector

        install_procrastinate(settings)
        self.url = settings.psycopg_url
        self.app = App(connector=SyncPsycopgConnector(conninfo=self.url))
        stack.enter_context(self.app.open())
        self.procs = [start_procrastinate(procs, settings, CONCURRENCY)]
        self.app.configure_task("bench.noop").defer()
        wait_until(lambda: self.completed() >= 1, 60, 0.1, "procrastinate worker ready")

    def produce(self, n: int) -> None:
        """``batch_defer`` in batches (procrastinate's enqueue_many)."""
        task = self.app.configure_task("bench.noop")
        for start in range(0, n, BATCH):
            task.batch_defer(*({"key": ""} for _ in range(start, min(n, start + BATCH))))

    def probe(self, key: str, token: str) -> None:
        """One ``stamp`` job."""
        self.app.configure_task("bench.stamp").defer(key=key, token=token)

    def completed(self) -> int:
        """Jobs succeeded in procrastinate's table."""
        return int(scalar(self.url, "SELECT count(*) FROM procrastinate_jobs WHERE status = 'succeeded'"))

    def reset(self) -> None:
        """Truncate procrastinate's jobs."""
        execute(self.url, "TRUNCATE procrastinate_jobs CASCADE")
