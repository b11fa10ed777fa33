"""A pool and a relay in the test's own process (real Postgres and RabbitMQ), for tests that drive one."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from outbox.config import Settings
from outbox.registry import registry
from outbox.tiers import PoolSpec
from tierbox.relay import Relay
from tierbox.workers.pool import Pool


async def published(settings: Settings, count: int) -> None:
    """Publish the outbox's jobs to their queues (the relay also declares the topology)."""
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == count
    finally:
        await relay.close()


@contextlib.asynccontextmanager
async def high_pool(settings: Settings) -> AsyncIterator[Pool]:
    """A pool over the ``high`` queue, in this process, not consuming: the test hands it messages."""
    pool = Pool(settings, "high", PoolSpec(tiers=("high",)), registry)
    try:
        yield pool
    finally:
        pool.executor.shutdown()
        await pool.admission.close()
        await pool.async_engine.dispose()
        await pool.ledger_engine.dispose()
        pool.sync_engine.dispose()
