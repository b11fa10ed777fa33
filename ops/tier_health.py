"""Tier health for operators: the ``outbox.tier_health`` view, live queue numbers from RabbitMQ and
the worker pools' unacked messages from Redis."""

from __future__ import annotations

import logging
from typing import Any

import redis.asyncio as aioredis

from outbox._logs import clip, event
from outbox._sql import run_async
from outbox.config import Settings
from tierbox.ops import queries
from tierbox.ops.broker import BrokerProbe
from tierbox.ops.models import TierHealth
from tierbox.workers import inflight

log = logging.getLogger("tierbox.api")


async def health(conn: Any, settings: Settings, broker: BrokerProbe,
                 redis: aioredis.Redis | None = None) -> list[TierHealth]:
    """Every tier of ``outbox.tiers``, heaviest first, with its queue and dlq depth and consumers, and
    (given ``redis``) the messages the pools hold unacked."""
    rows = await run_async(conn, queries.TIER_HEALTH)
    tiers = [TierHealth(**dict(zip(queries.TIER_HEALTH_COLUMNS, r, strict=True))) for r in rows]
    if redis is not None:
        await _unacked(redis, settings, tiers)
    names = {t.tier: queue_names(settings, t.tier) for t in tiers}
    try:
        stats = await broker.stats([q for pair in names.values() for q in pair])
    except Exception as exc:  # noqa: BLE001 - the SQL half is still worth showing; the error is reported
        error = clip(f"{type(exc).__name__}: {exc}", 200)
        for t in tiers:
            t.queue, t.broker_error = names[t.tier][0], error
        return tiers
    for t in tiers:
        queue, dlq = names[t.tier]
        t.queue = queue
        t.queue_depth, t.queue_consumers = stats.get(queue, (None, None))
        t.dlq_depth, t.dlq_consumers = stats.get(dlq, (None, None))
    return tiers


async def _unacked(redis: aioredis.Redis, settings: Settings, tiers: list[TierHealth]) -> None:
    """Fill ``unacked`` from the pools' in-flight reports; left None (and logged) if Redis does not answer."""
    try:
        held = await inflight.read_held_by_tier(redis, settings.queue_prefix)
        for t in tiers:
            t.unacked = len(held.get(t.tier, ()))
    except Exception as exc:  # noqa: BLE001 - the rest of the view is still worth showing
        for t in tiers:
            t.unacked = None
        event(log, "api.unacked_unavailable", logging.WARNING, error=clip(f"{type(exc).__name__}: {exc}", 200))


def queue_names(settings: Settings, tier: str) -> tuple[str, str]:
    """The tier's queue and dead-letter queue; tiers unknown to this topology use the tier's name."""
    if tier in settings.topology.tiers:
        return settings.queue_name(tier), settings.dlq_name(tier)
    return settings.queue_prefix + tier, settings.queue_prefix + tier + ".dlq"

