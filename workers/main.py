"""The ``tierbox worker`` process: one pool until SIGTERM/SIGINT (``--burst``: until drained), then a graceful stop."""

from __future__ import annotations

import asyncio
import os
import threading

from outbox import _tracing as tracing
from outbox._runtime import serve_until_signalled
from outbox.config import Settings
from outbox.errors import ConfigError
from outbox.registry import Registry
from outbox.tiers import PoolSpec
from tierbox.workers.pool import Pool


def pool_spec(settings: Settings, pool: str | None, queues: str | None, concurrency: int | None,
              prefetch: int | None) -> tuple[str, PoolSpec]:
    """The pool to run: a named pool of the topology, or an ad-hoc one from ``--queues``."""
    topology = settings.topology
    if queues:
        tiers = tuple(q.strip() for q in queues.split(",") if q.strip())
        unknown = [t for t in tiers if t not in topology.tiers]
        if unknown or not tiers:
            raise ConfigError("--queues", f"unknown tier(s) {unknown or queues!r}; known: {', '.join(topology.tiers)}")
        base = PoolSpec(tiers=tiers)
        name = pool or "adhoc-" + "-".join(tiers)
    else:
        if not pool or pool not in topology.pools:
            raise ConfigError("--pool", f"{pool!r} is not a pool; known: {', '.join(topology.pools)} (or --queues)")
        base, name = topology.pools[pool], pool
    spec = PoolSpec(tiers=base.tiers, concurrency=concurrency or base.concurrency,
                    prefetch=base.prefetch if prefetch is None else prefetch, min_share=base.min_share,
                    reserved=base.reserved)
    if spec.concurrency < 1 or spec.prefetch < 0:
        raise ConfigError("--concurrency", "concurrency must be >= 1 and prefetch >= 0")
    return name, spec


def main(settings: Settings, name: str, spec: PoolSpec, registry: Registry, metrics_port: int | None = None, *,
         burst: bool = False) -> int:
    """Run the pool (serving its counters on ``metrics_port`` if given); returns the exit code.

    ``burst``: return once the pool is drained (:meth:`Pool.drain`) instead of running until signalled.
    """
    if metrics_port:
        from tierbox.workers.counters import serve

        serve(metrics_port)

    tracing.configure_from_env("tierbox-worker")  # only if OTEL_* asks (docs/tracing.md); before the pool

    async def work(stop: asyncio.Event) -> None:
        pool = Pool(settings, name, spec, registry)
        await (pool.drain(stop) if burst else pool.run(stop))

    try:
        serve_until_signalled(work)
    finally:
        tracing.shutdown()  # exports the last spans: os._exit below skips the SDK's own atexit hook
    if threading.active_count() > 1:
        # Abandoned sync handlers (timeouts, grace period over) would hold the interpreter open.
        os._exit(0)
    return 0
