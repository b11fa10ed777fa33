"""Consumers the broker cancels: RabbitMQ sends ``basic.cancel`` when a consumed queue is deleted."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika

from outbox._logs import event

log = logging.getLogger("tierbox.worker")


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
