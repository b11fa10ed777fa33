"""The finishing stage (workers/finishing.py), driven in process against real Postgres and RabbitMQ:
which deliveries leave their slot at the handler's return, and what holds until they are finished."""

from __future__ import annotations

import aio_pika
import psycopg

import outbox
from outbox.config import Settings
from tests.worker.inprocess import high_pool, published


@outbox.task(tier="high", name="tests.finishing.quick")
async def quick(note: str) -> None:
    """Async without ctx: its success is recorded in the finishing stage."""


@outbox.task(tier="high", name="tests.finishing.long", long=True)
async def long_one(note: str) -> None:
    """A long task: acked once started, finished in its slot."""


@outbox.task(tier="high", name="tests.finishing.fails", max_retries=2)
async def fails(note: str) -> None:
    """Fails: its retry is recorded in the finishing stage."""
    raise RuntimeError("no")


async def test_a_returned_handler_leaves_its_slot_and_a_long_task_finishes_in_it(settings: Settings) -> None:
    with psycopg.connect(settings.psycopg_url) as conn:
        handed = {outbox.enqueue(conn, quick, args=["q"]), outbox.enqueue(conn, fails, args=["f"])}
        in_slot = outbox.enqueue(conn, long_one, args=["l"])
    await published(settings, 3)
    connection = await aio_pika.connect(settings.amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.get_queue(settings.queue_name("high"), ensure=False)
        async with high_pool(settings) as pool:
            processor = pool.processor
            for _ in range(3):
                message = await queue.get(no_ack=False, timeout=10)
                assert message is not None
                d = processor.delivery("high", message)
                await processor.take(d)  # what a slot awaits
                job = d.env.id
                if job in handed:
                    # The slot is free, the outcome not recorded yet: the job stays in `running` (its
                    # lease renewed by the heartbeat), and the message unacked, until the stage is done.
                    assert d.finishing is not None and not d.finished
                    assert job in processor.running and len(processor.finishing) == 1
                    await d.finishing
                else:
                    assert job == in_slot and d.finishing is None
                assert d.finished and job not in processor.running and len(processor.finishing) == 0
            assert processor.finishing.handed == 2
            assert pool.counts == {"succeeded": 2, "retried": 1}
        assert await queue.get(no_ack=False, fail=False) is None  # all three acked
    finally:
        await connection.close()
    with psycopg.connect(settings.psycopg_url) as conn:
        rows = dict(conn.execute("SELECT task, status FROM outbox.jobs").fetchall())
    assert rows == {"tests.finishing.quick": "succeeded", "tests.finishing.long": "succeeded",
                    "tests.finishing.fails": "retrying"}
