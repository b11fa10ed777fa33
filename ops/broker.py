"""Live RabbitMQ numbers: queue depth and consumer count, by passive declare.

RabbitMQ 3.x without the management plugin tells these only through
``queue.declare(passive=True)``. A missing queue closes the channel, so each
probe that fails gets a fresh channel. One connection is kept per process and
reopened when it drops: closed by the broker (``close_all_connections``, a
restart, a reset) it is replaced at the next probe, and a probe that fails on a
kept connection is tried once more on a new one, so the first request after the
broker is back already answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection

from outbox._logs import event

log = logging.getLogger("tierbox.api")


#: (messages ready, consumers); (None, None) when the queue does not exist.
QueueStats = tuple[int | None, int | None]
T = TypeVar("T")


#: Seconds a passive declare may take before the queue's numbers are reported missing.
DEFAULT_BROKER_TIMEOUT_S = 3.0


class BrokerProbe:
    """Reads queue depths and consumer counts from RabbitMQ."""

    def __init__(self, amqp_url: str, timeout_s: float) -> None:
        self._url = amqp_url
        self._timeout_s = timeout_s
        self._conn: AbstractConnection | None = None
        self._lock = asyncio.Lock()

    async def _connection(self) -> tuple[AbstractConnection, bool]:
        """The kept connection, reopened if the broker closed it; True if it was kept (not new)."""
        async with self._lock:
            if self._conn is not None and is_open(self._conn):
                return self._conn, True
            if self._conn is not None:
                event(log, "api.broker_reconnecting", logging.WARNING)
            await self._discard()
            from outbox._brokers import connect as connect_broker  # failover over TIERBOX_AMQP_URL's nodes
            self._conn = await connect_broker(
                self._url, timeout=self._timeout_s, client_properties={"connection_name": "tierbox-api"})
            return self._conn, False

    async def _discard(self, conn: AbstractConnection | None = None) -> None:
        """Forget the kept connection (``conn``: only if it is still that one), closing what is left of it."""
        old = self._conn
        if old is None or (conn is not None and old is not conn):
            return
        self._conn = None
        with contextlib.suppress(Exception):  # already closed by the broker: nothing to tell it
            await old.close()

    async def _on_connection(self, probe: Callable[[AbstractConnection], Awaitable[T]]) -> T:
        """Run ``probe`` on the kept connection; if that fails, once more on a new one.

        A kept connection may have been closed by the broker a moment ago without this process
        having read the close yet; the retry makes that invisible to the caller."""
        conn, kept = await self._connection()
        try:
            return await probe(conn)
        except Exception:
            if not kept:
                raise
        async with self._lock:
            await self._discard(conn)
        conn, _ = await self._connection()
        return await probe(conn)

    async def ping(self) -> None:
        """Raise unless RabbitMQ answers within the timeout."""
        await asyncio.wait_for(self._on_connection(_open_a_channel), self._timeout_s)

    async def stats(self, queues: list[str]) -> dict[str, QueueStats]:
        """(depth, consumers) per queue name; raises if RabbitMQ is unreachable or slow."""
        return await asyncio.wait_for(self._on_connection(lambda conn: self._stats(conn, queues)), self._timeout_s)

    async def _stats(self, conn: AbstractConnection, queues: list[str]) -> dict[str, QueueStats]:
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
        async with self._lock:
            await self._discard()


def is_open(conn: AbstractConnection) -> bool:
    """True while ``conn`` can carry frames.

    aio-pika's ``Connection.is_closed`` turns True only when this process calls ``close()``: a
    connection the broker closed (``close_all_connections``, a restart) keeps saying False, and
    every channel asked of it fails with ``RuntimeError: <Connection ...> closed``. Its
    ``connected`` event is cleared as soon as the broker's close (or the lost socket) is read.
    """
    return not conn.is_closed and conn.connected.is_set()


async def _open_a_channel(conn: AbstractConnection) -> None:
    channel = await conn.channel()
    await channel.close()
