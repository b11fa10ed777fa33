"""The examples' broker helpers take a comma-separated ``TIERBOX_AMQP_URL``, as Tierbox's processes do.

Each helper is given a list whose first address has no broker behind it and whose second is the
shared node: it must reach the broker through the second, as ``outbox._brokers.connect`` does,
where ``aio_pika.connect`` on the whole list fails.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import aio_pika
import aiormq
import msgspec
import pytest

from examples import support
from examples.demo import demo
from outbox.config import Settings
from tests.helpers import free_port


@pytest.fixture
def listed(settings: Settings) -> Settings:
    """``settings`` with a dead address listed before the shared node."""
    dead = f"amqp://guest:guest@127.0.0.1:{free_port()}/"
    return msgspec.structs.replace(settings, amqp_url=f"{dead},{settings.amqp_url}")


@pytest.fixture
def consumed(settings: Settings) -> Iterator[None]:
    """Every tier's queue declared, with a consumer on it, from a thread of its own until the test ends
    (the helpers run their own event loop, so this one cannot share the test's thread)."""
    ready, done = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    async def ack(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()

    async def consume() -> None:
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            channel = await conn.channel()
            for tier in settings.topology.tiers:
                queue = await channel.declare_queue(settings.queue_name(tier), auto_delete=False)
                await queue.consume(ack)
            ready.set()
            await asyncio.to_thread(done.wait)  # consuming until the test ends

    def run() -> None:
        try:
            asyncio.run(consume())
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            ready.set()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(30) and not errors, errors
    yield
    done.set()
    thread.join(30)


def _queue_exists(settings: Settings, name: str) -> bool:
    async def check() -> bool:
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            channel = await conn.channel()
            try:
                await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return False
        return True
    return asyncio.run(check())


@pytest.mark.usefixtures("consumed")
def test_wait_for_consumers_reaches_a_later_address(listed: Settings) -> None:
    began = time.monotonic()
    support.wait_for_consumers(listed, listed.topology.tiers, timeout_s=20)
    demo._wait_for_consumers(listed)  # raised on the list before, and waits up to 60 s when it sees no consumer
    assert time.monotonic() - began < 20


def test_delete_broker_objects_reaches_a_later_address(settings: Settings, listed: Settings) -> None:
    name = settings.queue_name("critical")

    async def declare() -> None:
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            await (await conn.channel()).declare_queue(name)
    asyncio.run(declare())
    assert _queue_exists(settings, name)
    for _ in range(2):  # the rotation starts at either address: both orders
        support.delete_broker_objects(listed)
        assert not _queue_exists(settings, name)
        asyncio.run(declare())
    support.delete_broker_objects(listed)
    assert not _queue_exists(settings, name)
