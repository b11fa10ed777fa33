"""A delivery is finished once: recorded, released, acked; a second finish is a bug and raises.

Real Postgres and RabbitMQ; the pool is in this process, and the test hands it messages.
"""

from __future__ import annotations

from typing import Any

import aio_pika
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests.worker.inprocess import high_pool, published
from tierbox.flow.gate import Decision
from tierbox.workers.delivery import Delivery, DeliveryFinishedError
from tierbox.workers.outcomes import Deferred, Duplicate, HandedBack


@outbox.task(tier="high", name="tests.delivery.noop")
async def noop(note: str) -> None:
    """Never run here: the test finishes its deliveries by hand."""


async def test_a_second_finish_raises_and_records_and_acks_nothing_more(settings: Settings) -> None:
    with psycopg.connect(settings.psycopg_url) as conn:
        job = outbox.enqueue(conn, noop, args=["once"])
    await published(settings, 1)
    async with high_pool(settings) as pool:
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            queue = await (await connection.channel()).get_queue(settings.queue_name("high"), ensure=False)
            message = await queue.get(no_ack=False, timeout=10)
            assert message is not None
            delivery = Delivery("high", message, pool.recorder, pool.admission)
            assert delivery.decode() is None and delivery.env.id == job
            await delivery.finish(Duplicate("finished"))
            assert delivery.finished
            with pytest.raises(DeliveryFinishedError):
                await delivery.finish(Duplicate("finished"))
            assert pool.counts == {"skipped_finished": 1}  # recorded once
            assert await queue.get(no_ack=False, fail=False) is None  # acked, not handed back


async def test_a_finish_whose_record_fails_leaves_the_delivery_open(settings: Settings) -> None:
    """Postgres refused the outcome: nothing is acked, and the delivery can still be finished
    (here handed back: the message returns to its queue)."""
    with psycopg.connect(settings.psycopg_url) as conn:
        outbox.enqueue(conn, noop, args=["refused"])
    await published(settings, 1)

    async def refused(*args: Any, **kw: Any) -> bool:
        raise psycopg.OperationalError("test: Postgres went away")

    async with high_pool(settings) as pool:
        pool.ledger.defer = refused  # type: ignore[method-assign]
        connection = await aio_pika.connect(settings.amqp_url)
        async with connection:
            queue = await (await connection.channel()).get_queue(settings.queue_name("high"), ensure=False)
            message = await queue.get(no_ack=False, timeout=10)
            assert message is not None
            delivery = Delivery("high", message, pool.recorder, pool.admission)
            assert delivery.decode() is None
            with pytest.raises(psycopg.OperationalError):
                await delivery.finish(Deferred(Decision(run=False, delay_s=1.0, reason="rate_limited")))
            assert not delivery.finished and pool.counts == {}
            await delivery.finish(HandedBack())
            again = await queue.get(no_ack=False, timeout=10)
            assert again is not None and again.redelivered and again.body == message.body
            await again.ack()
