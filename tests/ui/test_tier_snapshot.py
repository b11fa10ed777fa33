"""The shared tier-health snapshot behind ``GET /admin/tiers`` and the dashboard, on real Postgres and RabbitMQ."""

from __future__ import annotations

import asyncio

import msgspec

from outbox.config import Settings
from tierbox.ops import db
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.snapshot import TierSnapshot


async def test_concurrent_readers_share_one_refresh_per_second(settings: Settings) -> None:
    engine = db.create_engine(settings)
    broker = BrokerProbe(settings.amqp_url, 3.0)
    snapshot = TierSnapshot(engine, settings, broker, max_age_s=0.5)
    try:
        views = await asyncio.gather(*(snapshot.get() for _ in range(20)))
        assert snapshot.refreshes == 1 and all(v is views[0] for v in views)
        assert {t.tier for t in views[0]} == set(settings.topology.tiers)
        assert (await snapshot.get()) is views[0] and snapshot.refreshes == 1  # still fresh
        await asyncio.sleep(0.6)
        again = await asyncio.gather(*(snapshot.get() for _ in range(5)))
        assert snapshot.refreshes == 2 and again[0] is not views[0]
    finally:
        await broker.close()
        await engine.dispose()


async def test_a_failed_refresh_is_not_kept(settings: Settings) -> None:
    engine = db.create_engine(msgspec.structs.replace(settings, database_url=settings.database_url + "_missing"))
    broker = BrokerProbe(settings.amqp_url, 3.0)
    snapshot = TierSnapshot(engine, settings, broker)
    try:
        for _ in range(2):  # each reader after a failure tries again (no cached error)
            try:
                await snapshot.get()
            except Exception as exc:  # noqa: BLE001 - the database does not exist: any driver error
                assert "_missing" in str(exc)
            else:
                raise AssertionError("a missing database answered")
        assert snapshot.refreshes == 0 and snapshot.age_s is None
    finally:
        await broker.close()
        await engine.dispose()
