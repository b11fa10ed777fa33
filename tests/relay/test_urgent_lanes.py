"""Several urgent lanes per relay process (#19): a NOTIFY wakes one idle lane, a wake-up that finds
every lane busy is owed to the next one to go idle, and a row committed while one lane holds its
batch in flight (waiting for confirms or its commit) is published by another lane meanwhile."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import wait_until_async
from tests.relay.test_batch_round_trips import _depth_at_least
from tests.relay.test_relay import enqueue_committed, pending_count, queue_depth
from tierbox.relay.main import serve
from tierbox.relay.relay import PAUSE_URGENT_ONCE_ENV
from tierbox.relay.wakeup import LaneGroup, Wakeup


def test_a_wake_up_goes_to_one_idle_lane() -> None:
    group, a, b = LaneGroup(), Wakeup(), Wakeup()
    group.idle(a)
    group.idle(b)
    group.poke()
    assert [a._event.is_set(), b._event.is_set()] == [False, True]  # the lane idle last, one only
    group.busy(b)
    group.poke()
    assert a._event.is_set()


def test_a_wake_up_with_every_lane_busy_is_owed_to_the_next_idle_lane() -> None:
    group, a = LaneGroup(), Wakeup()
    group.poke()  # no lane idle: owed
    group.poke()  # folded into the same debt
    group.idle(a)
    assert a._event.is_set()  # claims at once instead of waiting for the next NOTIFY
    a.clear()
    group.busy(a)
    group.idle(a)
    assert not a._event.is_set()  # the debt was paid once


@pytest.mark.parametrize(("lanes", "second_published_during_pause"), [(2, True), (1, False)])
async def test_a_row_committed_during_a_held_urgent_batch_is_published_by_another_lane(
        settings: Settings, amqp, monkeypatch: pytest.MonkeyPatch, lanes: int,
        second_published_during_pause: bool) -> None:
    monkeypatch.setenv(PAUSE_URGENT_ONCE_ENV, "4")
    stop = asyncio.Event()
    relay = asyncio.create_task(serve(msgspec.structs.replace(settings, relay_urgent_lanes=lanes), stop, lane="urgent"))
    queue = settings.queue_name("critical")
    try:
        enqueue_committed(settings.database_url, "sample.otp", args=["held"])
        # Confirmed (in the queue), then held before its commit for 4 s.
        await wait_until_async(lambda: _depth_at_least(amqp, queue, 1), timeout=20, what="first batch confirmed")
        enqueue_committed(settings.database_url, "sample.otp", args=["next"])
        await asyncio.sleep(1.5)  # well inside the pause
        assert (await queue_depth(amqp, queue) == 2) is second_published_during_pause
        await wait_until_async(lambda: _depth_at_least(amqp, queue, 2), timeout=20, what="second published")
    finally:
        stop.set()
        await asyncio.wait_for(relay, 30)
    assert pending_count(settings.database_url) == 0

