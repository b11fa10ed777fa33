"""The relay's batch in two round trips (#19): the lane's next due time read in the batch's
transaction, the batch's own commit setting, and a NOTIFY lane that waits after a partial batch
yet still publishes what is committed later, at once or when it falls due."""

from __future__ import annotations

import asyncio
import time

import msgspec

from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import wait_until_async
from tests.relay.test_relay import enqueue_committed, pending_count, queue_depth
from tierbox.relay import Relay
from tierbox.relay.main import serve


async def test_a_partial_batch_reads_the_next_due_time(settings: Settings, amqp) -> None:
    enqueue_committed(settings.database_url, "sample.webhook", args=["later"], delay=30)
    enqueue_committed(settings.database_url, "sample.webhook", args=["now"])
    relay = await Relay.connect(settings)
    try:
        assert await relay.run_once() == 1
        assert not relay.full
        assert relay.next_due_s is not None and 25 < relay.next_due_s <= 30
        assert await relay.run_once() == 0  # an empty claim reads it too
        assert relay.next_due_s is not None and 25 < relay.next_due_s <= 30
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("high")) == 1
    assert pending_count(settings.database_url) == 1


async def test_a_full_batch_claims_again_and_nothing_pending_reads_none(settings: Settings, amqp) -> None:
    enqueue_committed(settings.database_url, "sample.webhook", 3, args=["x"])
    relay = await Relay.connect(msgspec.structs.replace(settings, relay_batch_size=2))
    try:
        assert await relay.run_once() == 2
        assert relay.full and relay.next_due_s is None  # not read: the lane claims again at once
        assert await relay.run_once() == 1
        assert not relay.full and relay.next_due_s is None  # read: nothing pending
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("high")) == 3


async def test_the_async_commit_is_the_batch_transactions_only(settings: Settings, amqp) -> None:
    enqueue_committed(settings.database_url, "sample.webhook", args=["x"])
    relay = await Relay.connect(settings)
    try:
        assert await relay.run_once() == 1
        cur = await relay.db.execute("SHOW synchronous_commit")
        assert await cur.fetchone() == ("on",)  # SET LOCAL ended with the batch
        await relay.db.rollback()
    finally:
        await relay.close()
    assert pending_count(settings.database_url) == 0


async def test_the_urgent_lane_publishes_what_comes_after_a_partial_batch(settings: Settings, amqp) -> None:
    stop = asyncio.Event()
    relay = asyncio.create_task(serve(settings, stop, lane="urgent"))
    queue = settings.queue_name("critical")
    try:
        enqueue_committed(settings.database_url, "sample.otp", args=["1"])
        await wait_until_async(lambda: _depth_at_least(amqp, queue, 1), timeout=20, what="first published")
        # The lane now waits (no claim after its partial batch): a NOTIFY must wake it ...
        enqueue_committed(settings.database_url, "sample.otp", args=["2"])
        await wait_until_async(lambda: _depth_at_least(amqp, queue, 2), timeout=20, what="second published")
        # ... and a delayed row, which notifies when it is committed, not when it falls due.
        committed = time.monotonic()
        enqueue_committed(settings.database_url, "sample.otp", args=["3"], delay=1.0)
        await wait_until_async(lambda: _depth_at_least(amqp, queue, 3), timeout=20, what="delayed published")
        assert time.monotonic() - committed >= 0.9  # not before it was due
    finally:
        stop.set()
        await asyncio.wait_for(relay, 30)
    assert pending_count(settings.database_url) == 0


async def _depth_at_least(amqp, queue: str, n: int) -> bool:  # type: ignore[no-untyped-def]
    return await queue_depth(amqp, queue) >= n
