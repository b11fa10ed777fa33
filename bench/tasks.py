"""Tierbox tasks the benchmark processes load (``--app bench.tasks``).

``stamp_*`` handlers record the wall-clock time they started in a Redis list,
the first thing they do, so commit -> handler-start latency is measured on
one clock (the machine's) without adding a database write to the handler.
"""

from __future__ import annotations

import asyncio
import os
import time

import redis

import outbox
from outbox import Tier

_redis: redis.Redis | None = None


def stamp_now(key: str, token: str) -> None:
    """Append ``token start_time`` to the Redis list ``key`` (shared by every system's probe task)."""
    started = time.time()
    global _redis
    if _redis is None:
        _redis = redis.Redis.from_url(os.environ.get("TIERBOX_REDIS_URL", "redis://127.0.0.1:6379/0"))
    _redis.rpush(key, f"{token} {started:.6f}")


@outbox.task(tier=Tier.HIGH, name="bench.noop")
async def noop(key: str = "", n: int = 0) -> None:
    """Do nothing: what is measured is the machinery around it."""


@outbox.task(tier=Tier.HIGH, name="bench.noop_sync")
def noop_sync(key: str = "", n: int = 0) -> None:
    """Do nothing, in the thread pool (the path a plain ``def`` handler takes)."""


@outbox.task(tier=Tier.BULK, name="bench.bulk")
async def bulk(key: str = "", n: int = 0) -> None:
    """A BULK no-op (the backlog of the urgency and memory benchmarks)."""


@outbox.task(tier=Tier.CRITICAL, name="bench.stamp_critical")
async def stamp_critical(key: str, token: str) -> None:
    """A CRITICAL probe: records when it started."""
    stamp_now(key, token)


@outbox.task(tier=Tier.HIGH, name="bench.busy_high")
async def busy_high(seconds: float) -> None:
    """HIGH work that keeps an urgent slot busy for ``seconds``."""
    await asyncio.sleep(seconds)
