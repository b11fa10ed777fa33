"""The RabbitMQ side of the topology: exchanges, tier queues and their dead-letter queues.

Declared idempotently by whichever process connects first (relay or worker),
from :class:`outbox.tiers.Topology` and :class:`outbox.config.Settings`:

* ``<prefix>tierbox`` (direct, durable): the relay publishes with routing key
  = tier name; each tier queue is bound under its tier name.
* ``<prefix>tierbox.dlx`` (direct, durable): each tier queue dead-letters
  here with routing key = tier name into ``<queue>.dlq`` (durable, 30-day
  message TTL; classic unless the tier's ``dlq_queue_type`` says quorum).
  Workers sweep those into ``outbox.dead_letters``.

A queue that already exists with other arguments makes RabbitMQ close the
channel with PRECONDITION_FAILED; that becomes a
:class:`~outbox.errors.TopologyMismatchError` saying how to fix it.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import aiormq

from outbox.config import Settings
from outbox.errors import TopologyMismatchError
from outbox.tiers import DLQ_MESSAGE_TTL_MS


def queue_arguments(settings: Settings, tier: str) -> dict[str, Any]:
    """The x-arguments of ``tier``'s queue."""
    spec = settings.topology.spec(tier)
    args: dict[str, Any] = {
        "x-queue-type": spec.queue_type,
        "x-dead-letter-exchange": settings.dlx_name,
        "x-dead-letter-routing-key": tier,
    }
    if spec.queue_type == "classic" and spec.max_priority:
        args["x-max-priority"] = spec.max_priority
    return args


def dlq_arguments(queue_type: str = "classic") -> dict[str, Any]:
    """The x-arguments of a ``<tier>.dlq`` queue (its tier's ``dlq_queue_type``)."""
    return {"x-queue-type": queue_type, "x-message-ttl": DLQ_MESSAGE_TTL_MS}


async def declare_topology(connection: aio_pika.abc.AbstractConnection, settings: Settings,
                           tiers: list[str] | None = None) -> None:
    """Declare the exchanges and the queues of ``tiers`` (default: all tiers)."""
    channel = await connection.channel(publisher_confirms=False)
    try:
        exchange = await _declare_exchange(channel, settings.exchange_name)
        dlx = await _declare_exchange(channel, settings.dlx_name)
        for tier in tiers or list(settings.topology.tiers):
            queue = await _declare_queue(channel, settings.queue_name(tier), queue_arguments(settings, tier))
            await queue.bind(exchange, routing_key=tier)
            dlq_type = settings.topology.spec(tier).dlq_queue_type
            dlq = await _declare_queue(channel, settings.dlq_name(tier), dlq_arguments(dlq_type))
            await dlq.bind(dlx, routing_key=tier)
    finally:
        if not channel.is_closed:
            await channel.close()


async def _declare_exchange(channel: aio_pika.abc.AbstractChannel, name: str) -> aio_pika.abc.AbstractExchange:
    try:
        return await channel.declare_exchange(name, aio_pika.ExchangeType.DIRECT, durable=True)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyMismatchError(
            f"exchange {name!r} exists with other settings than a durable direct exchange ({exc}). "
            f"Fix: delete it (rabbitmqctl delete_exchange {name}) or set TIERBOX_EXCHANGE to another name."
        ) from exc


async def _declare_queue(channel: aio_pika.abc.AbstractChannel, name: str,
                         arguments: dict[str, Any]) -> aio_pika.abc.AbstractQueue:
    try:
        return await channel.declare_queue(name, durable=True, arguments=arguments)
    except aiormq.exceptions.ChannelPreconditionFailed as exc:
        raise TopologyMismatchError(
            f"queue {name!r} exists with other arguments than the topology says {arguments} ({exc}). "
            f"Fix: drain and delete it (rabbitmqctl delete_queue {name}) so it is declared anew, "
            f"or change the topology (TIERBOX_TOPOLOGY_FILE) to match the existing queue."
        ) from exc
