"""When a pool has nothing left to do: the check behind ``Pool.drain`` and ``tierbox worker --burst``.

A pool is *drained* when two checks ``settle_s`` apart both find it empty and no delivery
reached it in between. Empty means all of:

1. **broker**: every tier queue the pool consumes reports 0 ready messages (a passive declare;
   messages delivered to the pool and unacked are not "ready", so 2. covers them);
2. **pool**: its priority buffer is empty and no delivery is being handled (no start, attempt or
   outcome in progress);
3. **outbox**: no ``outbox.pending`` row of the pool's tiers is due within ``settle_s``
   (``queries.DUE_SOON``): a job just enqueued, or a retry due now or within ``settle_s``, is on
   its way through the relay and is waited for. A retry or deferral due later is not (a drain
   would otherwise last as long as the longest back-off); nor are rows of a paused tier.

The second check catches a message the broker had already handed over (no longer ready) that had
not reached the buffer at the first. Condition 3 needs a relay running to publish what is due.
The pool's dead-letter queues are swept as always but not waited for.
"""

from __future__ import annotations

import aio_pika
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox._sql import run_async
from tierbox.workers import queries

#: Seconds between the two checks of a drain, and how far ahead due outbox rows are waited for.
DRAIN_SETTLE_S = 0.5


async def queue_counts(connection: aio_pika.abc.AbstractConnection,
                       queue_names: list[str]) -> list[tuple[int, int]]:
    """(ready messages, consumers) of each queue, in order, by passive declare on a channel of its own
    (a passive declare of a missing queue closes its channel)."""
    channel = await connection.channel()
    try:
        counts = []
        for name in queue_names:
            result = (await channel.declare_queue(name, passive=True)).declaration_result
            counts.append((result.message_count or 0, result.consumer_count or 0))
        return counts
    finally:
        if not channel.is_closed:
            await channel.close()


async def ready_messages(connection: aio_pika.abc.AbstractConnection, queue_names: list[str]) -> int:
    """Messages ready (not delivered to any consumer) in these queues."""
    return sum(ready for ready, _ in await queue_counts(connection, queue_names))


async def due_soon(engine: AsyncEngine, tiers: list[str], within_s: float) -> int:
    """``outbox.pending`` rows of ``tiers`` (not paused) due within ``within_s`` seconds."""
    async with engine.connect() as conn:
        rows = await run_async(conn, queries.DUE_SOON, {"tiers": tiers, "within_s": within_s})
    return rows[0].rows
