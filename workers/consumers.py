"""Consumers the broker cancels: RabbitMQ sends ``basic.cancel`` when a consumed queue is deleted.

And consumers that are gone without one: a pool also checks every :data:`CHECK_INTERVAL_S` that each
queue it consumes has a consumer at all (:func:`unconsumed`). A chaos run once left the ``normal``
queue without any consumer for 2.5 minutes after a fault deleted it, the pool never told (no
``basic.cancel`` reached it, so no ``worker.consumer_cancelled``), while the reconciler republished
the missing messages into a queue nobody read. The check is the backstop: a queue of the pool's
with no consumer means the pool's own consumer is gone, and the pool reconnects, which declares the
queue again and consumes anew.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika

from outbox._logs import event
from tierbox.workers.drain import queue_counts

log = logging.getLogger("tierbox.worker")

#: Seconds between two checks that the pool's queues still have a consumer.
CHECK_INTERVAL_S = 5.0


async def watch_cancel(channel: aio_pika.abc.AbstractChannel, queue: str, lost: asyncio.Event) -> None:
    """Set ``lost`` when the broker cancels a consumer of ``channel`` (``basic.cancel``: its queue is gone).

    aio-pika reports a server-sent cancel only through the underlying aiormq channel's
    ``on_consumer_cancel_callbacks`` (and a log line); the channel itself stays open, so without
    this the pool would sit on a live connection that delivers nothing.
    """
    def cancelled(frame: Any) -> None:
        event(log, "worker.consumer_cancelled", logging.WARNING, queue=queue,
              consumer_tag=getattr(frame, "consumer_tag", ""))
        lost.set()

    underlay = await channel.get_underlay_channel()
    underlay.on_consumer_cancel_callbacks.add(cancelled)


async def unconsumed(connection: aio_pika.abc.AbstractConnection, queue_names: list[str]) -> list[str]:
    """The queues of ``queue_names`` that report no consumer."""
    counts = await queue_counts(connection, queue_names)
    return [name for name, (_, consumers) in zip(queue_names, counts, strict=True) if not consumers]
