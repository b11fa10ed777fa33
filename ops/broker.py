"""Live RabbitMQ numbers: queue depth and consumer count, by passive declare.

RabbitMQ 3.x without the management plugin tells these only through
``queue.declare(passive=True)``. A missing queue closes the channel, so each
probe that fails gets a fresh channel. One connection is kept per process and
reopened when it drops.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

log = logging.getLogger("tierbox.api")


#: (messages ready, consumers); (None, None) when the queue does not exist.
QueueStats = tuple[int | None, int | None]


#: Seconds a passive declare may take before the queue's numbers are reported missing.
DEFAULT_BROKER_TIMEOUT_S = 3.0


class BrokerProbe:
    """Reads queue depths and consumer counts from RabbitMQ."""

    def __init__(self, amqp_url: str, timeout_s: float) -> None:
        self._url = amqp_url
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> AbstractConnection:
        async with self._lock:
            if self._conn is None or self._conn.is_closed:
                self._conn = await aio_pika.connect(
                    self._url, timeout=self._timeout_s, client_properties={"connection_name": "tierbox-api"})
            return self._conn

    async def ping(self) -> None:
        """Raise unless RabbitMQ answers within the timeout."""
        conn = await asyncio.wait_for(self._connection(), self._timeout_s)
        channel = await asyncio.wait_for(conn.channel(), self._timeout_s)
        await channel.close()

    async def stats(self, queues: list[str]) -> dict[str, QueueStats]:
        """(depth, consumers) per queue name; raises if RabbitMQ is unreachable or slow."""
        return await asyncio.wait_for(self._stats(queues), self._timeout_s)

    async def _stats(self, queues: list[str]) -> dict[str, QueueStats]:
        conn = await self._connection()
        out: dict[str, QueueStats] = {}
        channel: AbstractChannel | None = None
        for name in queues:
            if channel is None or channel.is_closed:
                channel = await conn.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aio_pika.exceptions.ChannelClosed:  # NOT_FOUND closes the channel
                out[name] = (None, None)
                continue
            result: Any = queue.declaration_result
            out[name] = (result.message_count, result.consumer_count)
        if channel is not None and not channel.is_closed:
            await channel.close()
        return out

    async def close(self) -> None:
        """Close the kept connection."""
        if self._conn is not None and not self._conn.is_closed:
            await self._conn.close()
