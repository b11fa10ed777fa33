"""Starting the peers (Celery, procrastinate) beside Tierbox, against the same services."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import Iterator

import aio_pika

from bench.harness import Proc, Procs, child_env
from outbox.config import Settings


def celery_queue(settings: Settings) -> str:
    """This run's Celery queue (also the name of the exchange Celery declares for it)."""
    return settings.queue_prefix + "celery"


def celery_env(settings: Settings) -> dict[str, str]:
    """What :mod:`bench.celery_app` reads, for this run."""
    return child_env(settings, {"BENCH_AMQP_URL": settings.amqp_url, "BENCH_CELERY_QUEUE": celery_queue(settings)})


def start_celery(procs: Procs, settings: Settings, concurrency: int) -> Proc:
    """A Celery worker with the thread pool and the issue's settings (see bench/celery_app.py)."""
    argv = [sys.executable, "-m", "celery", "-A", "bench.celery_app", "worker", "--pool", "threads",
            "--concurrency", str(concurrency), "--queues", celery_queue(settings), "--loglevel", "WARNING",
            "--without-heartbeat", "--without-gossip", "--without-mingle",
            # A node name of the run's own: two workers under the default celery@host collide on
            # Celery's exclusive pidbox queue on a shared broker (RESOURCE_LOCKED).
            "--hostname", f"bench-{celery_queue(settings)}-{os.getpid()}@%h"]
    return procs.command(argv, celery_env(settings), "celery")


@contextlib.contextmanager
def celery_client(settings: Settings) -> Iterator[None]:
    """Point the in-process Celery app at this run's queue; delete the queue and exchange afterwards."""
    from bench import celery_app

    celery_app.app.conf.update(broker_url=settings.amqp_url, task_default_queue=celery_queue(settings))
    try:
        yield
    finally:
        # The producer pool is left open: kombu caches it process-wide, and a closed one refuses the next run.
        asyncio.run(_delete_celery_objects(settings))


async def _delete_celery_objects(settings: Settings) -> None:
    conn = await aio_pika.connect(settings.amqp_url)
    try:
        for op in ("queue_delete", "exchange_delete"):
            channel = await conn.channel()
            with contextlib.suppress(Exception):
                await getattr(channel, op)(celery_queue(settings))
    finally:
        await conn.close()


def procrastinate_env(settings: Settings, concurrency: int) -> dict[str, str]:
    """What :mod:`bench.procrastinate_app` reads, for this run."""
    return child_env(settings, {"BENCH_PG_URL": settings.psycopg_url, "BENCH_CONCURRENCY": str(concurrency)})


def install_procrastinate(settings: Settings) -> None:
    """Apply procrastinate's schema to this run's database (beside the outbox schema)."""
    from procrastinate import App, PsycopgConnector

    async def apply() -> None:
        app = App(connector=PsycopgConnector(conninfo=settings.psycopg_url))
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    asyncio.run(apply())


def start_procrastinate(procs: Procs, settings: Settings, concurrency: int) -> Proc:
    """A procrastinate worker with ``concurrency`` slots on this run's database."""
    argv = [sys.executable, "-m", "bench.procrastinate_app"]
    return procs.command(argv, procrastinate_env(settings, concurrency), "procrastinate")
