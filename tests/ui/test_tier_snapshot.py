"""The shared tier-health snapshot behind ``GET /admin/tiers`` and the dashboard, on real Postgres and RabbitMQ."""

from __future__ import annotations

import asyncio
import uuid

import msgspec

from outbox.config import Settings
from tierbox.ops import db
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.snapshot import TierSnapshot
from tierbox.workers.inflight import InflightReporter


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


class _Delivery(msgspec.Struct):
    """What the in-flight reporter reads off a delivered message: its id (the job id)."""

    message_id: str


async def test_unacked_counts_what_the_pools_report_holding(settings: Settings) -> None:
    engine = db.create_engine(settings)
    broker = BrokerProbe(settings.amqp_url, 3.0)
    snapshot = TierSnapshot(engine, settings, broker, max_age_s=0.0)
    # Two pools' reporters, as a pool's delivery loop drives them: three messages held in high, one in low.
    # Worker ids hold ':' as real ones do (host:pid:hex): the tier is read from the key up to the first.
    pools = [InflightReporter(settings, f"host:{n}:pool", ["high", "low"]) for n in range(2)]
    # Kept alive: a reporter keys what it holds by id(message), as a pool holds its message objects.
    held = [(tier, pool, _Delivery(str(uuid.uuid4()))) for tier, pool in (("high", 0), ("high", 0), ("high", 1),
                                                                          ("low", 1))]
    for tier, pool, message in held:
        pools[pool].hold(tier, message)
    try:
        for reporter in pools:
            await reporter.publish()
        by_tier = {t.tier: t.unacked for t in await snapshot.get()}
        assert by_tier["high"] == 3 and by_tier["low"] == 1 and by_tier["critical"] == 0
        await pools[1].close()  # a pool that stops takes its keys with it
        by_tier = {t.tier: t.unacked for t in await snapshot.get()}
        assert by_tier["high"] == 2 and by_tier["low"] == 0
    finally:
        for reporter in pools:
            await reporter.close()
        await snapshot.close()
        await broker.close()
        await engine.dispose()


async def test_unacked_is_unknown_not_zero_while_redis_is_down(settings: Settings) -> None:
    engine = db.create_engine(settings)
    broker = BrokerProbe(settings.amqp_url, 3.0)
    down = msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1/0")  # nothing listens on port 1
    snapshot = TierSnapshot(engine, down, broker)
    try:
        view = await snapshot.get()
        assert view and all(t.unacked is None for t in view)
        assert {t.tier for t in view} == set(settings.topology.tiers)  # the rest of the view is still there
    finally:
        await snapshot.close()
        await broker.close()
        await engine.dispose()


async def test_open_dead_letters_come_with_the_shared_refresh(settings: Settings) -> None:
    import psycopg

    from tests import sample_tasks  # noqa: F401 - registers the tasks dead_job fails
    from tests.factories import dead_job
    from tierbox.ops import dead_letters
    from tierbox.ops.audit import Actor

    with psycopg.connect(settings.database_url) as conn:
        dead = [dead_job(conn), dead_job(conn, task="sample.effect")]
    engine = db.create_engine(settings)
    broker = BrokerProbe(settings.amqp_url, 3.0)
    snapshot = TierSnapshot(engine, settings, broker, max_age_s=60)
    try:
        await asyncio.gather(*(snapshot.get() for _ in range(10)))
        assert snapshot.refreshes == 1 and snapshot.open_dead_letters == {"normal": 1, "high": 1}
        await dead_letters.discard(engine, Actor.os_user(), dead[0], reason="test")  # no longer open
        await snapshot.get()
        assert snapshot.open_dead_letters == {"normal": 1, "high": 1}  # still the shared second's view
        snapshot.max_age_s = 0
        await snapshot.get()
        assert snapshot.refreshes == 2 and snapshot.open_dead_letters == {"high": 1}
    finally:
        await broker.close()
        await engine.dispose()
