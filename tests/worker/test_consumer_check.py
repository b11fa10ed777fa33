"""A pool whose consumer is gone without a ``basic.cancel`` notices and consumes again (workers.consumers)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from outbox.config import Settings
from tests.broker.helpers import queue_stats
from tests.worker.inprocess import high_pool
from tierbox.workers.consumers import CHECK_INTERVAL_S

pytestmark = pytest.mark.slow


async def _until(what: str, check: object, timeout: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        if await asyncio.to_thread(check):  # type: ignore[arg-type]
            return time.monotonic() - began
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_a_consumer_gone_without_a_cancel_is_noticed_and_made_again(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="tierbox.worker")
    queue = settings.queue_name("high")
    stats = lambda: queue_stats(settings.amqp_url, queue)  # noqa: E731 - (ready, consumers) by passive declare
    async with high_pool(settings) as pool:
        stop = asyncio.Event()
        run = asyncio.create_task(pool.run(stop))
        try:
            await _until("the pool consuming", lambda: stats() == (0, 1), 30)
            consumed, tag = pool._consumers[0]
            # The client's own cancel: the broker answers CancelOk and sends no basic.cancel, so the
            # pool's cancel watch hears nothing: the consumer is simply gone, as in the chaos run.
            await consumed.cancel(tag)
            assert await asyncio.to_thread(stats) == (0, 0)
            back_s = await _until("a consumer again", lambda: stats() == (0, 1), CHECK_INTERVAL_S * 3 + 10)
            assert "worker.consumer_missing" in caplog.text and "worker.consumer_cancelled" not in caplog.text
            assert back_s < CHECK_INTERVAL_S * 3 + 10
        finally:
            stop.set()
            await asyncio.wait_for(run, 60)
