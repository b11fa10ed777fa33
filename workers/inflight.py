"""What a pool holds delivered and not finished, published to Redis for the relay's reconciler.

A message a pool has received leaves its queue's ready count but its job stays ``published`` until
a worker starts it. The reconciler (:mod:`tierbox.relay.reconcile`) compares, per tier, the jobs
Postgres says are published and not started with the queue's ready messages plus these: without
them every message in a pool's buffer would look lost. Each pool writes, every
:data:`PUBLISH_INTERVAL_S`, one key per tier it consumes (:func:`key`) holding the ids of the jobs
whose messages it holds (buffered, starting or running: the reconciler counts only those still
``published``), with a TTL of :data:`TTL_S`, so a pool that dies stops counting within seconds.

Redis being unreachable is logged once (and once when it is back); the pool works on. The
reconciler skips its rounds while it cannot read Redis itself.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from outbox._logs import event
from outbox.config import Settings

# The flow gate's client: short timeouts, no retries, so a dead Redis costs ~0.5 s a publish.
from tierbox.flow.gate import connect

log = logging.getLogger("tierbox.worker")

#: How often a pool publishes what it holds, seconds.
PUBLISH_INTERVAL_S = 1.0
#: Lifetime of a published set: a few intervals, so a dead pool's set disappears soon.
TTL_S = 5
#: Job ids in one key's value are joined with this.
SEPARATOR = ","


def key(prefix: str, tier: str, worker_id: str) -> str:
    """The Redis key of one pool's held job ids of ``tier``."""
    return f"tierbox:{prefix}:inflight:{tier}:{worker_id}"


def pattern(prefix: str, tier: str) -> str:
    """A SCAN ``MATCH`` pattern for every pool's key of ``tier`` (glob characters of the names escaped)."""
    return key(_glob_escape(prefix), _glob_escape(tier), "*")


def _glob_escape(text: str) -> str:
    return re.sub(r"([\\*?\[\]])", r"\\\1", text)


async def read_held(redis: aioredis.Redis, prefix: str, tier: str) -> list[str]:
    """Job ids of ``tier`` that every live pool reports holding (valid UUIDs only: a garbage message id
    names no job). Read by the reconciler and by the dashboard's unacked count; raises if Redis does."""
    keys = [k async for k in redis.scan_iter(match=pattern(prefix, tier), count=1000)]
    values = await redis.mget(keys) if keys else []
    return [i for v in values if v for i in split_ids(v)]


async def read_held_by_tier(redis: aioredis.Redis, prefix: str) -> dict[str, list[str]]:
    """:func:`read_held` for every tier at once: one ``SCAN`` over the deployment's in-flight keys (the
    dashboard's unacked counts each refresh), not one per tier. A tier's name never holds ``:``
    (:data:`outbox.tiers.TIER_NAME`), so the key's part after ``inflight:`` up to the next ``:`` is it."""
    head = key(prefix, "", "")[:-1]  # "tierbox:<prefix>:inflight:"
    keys = [k.decode() if isinstance(k, bytes) else k
            async for k in redis.scan_iter(match=_glob_escape(head) + "*", count=1000)]
    values = await redis.mget(keys) if keys else []
    held: dict[str, list[str]] = {}
    for name, value in zip(keys, values, strict=True):
        if value:
            held.setdefault(name[len(head):].split(":", 1)[0], []).extend(split_ids(value))
    return held


def split_ids(value: bytes | str) -> list[str]:
    """The job ids joined in one Redis value (valid UUIDs only)."""
    text = value.decode() if isinstance(value, bytes) else value
    return [i for i in text.split(SEPARATOR) if _is_uuid(i)]


def _is_uuid(text: str) -> bool:
    try:
        uuid.UUID(text)
    except ValueError:
        return False
    return True


class InflightReporter:
    """One pool's held messages by tier; :meth:`publish` writes them to Redis."""

    def __init__(self, settings: Settings, worker_id: str, tiers: Iterable[str]) -> None:
        self.prefix = settings.queue_prefix
        self.worker_id = worker_id
        self.tiers = list(tiers)
        self._settings = settings
        self._redis: aioredis.Redis | None = None
        #: id(message) -> (tier, job id): a message object per delivery, so two copies of a job count twice.
        self._held: dict[int, tuple[str, str]] = {}
        self._failing = False

    def hold(self, tier: str, message: Any) -> None:
        """The pool received ``message`` from ``tier``'s queue."""
        self._held[id(message)] = (tier, str(message.message_id or ""))

    def drop(self, message: Any) -> None:
        """The pool is done with ``message`` (acked, handed back or rejected)."""
        self._held.pop(id(message), None)

    def forget(self, dropped: list[tuple[str, Any]]) -> int:
        """Messages the pool dropped from its buffer (their connection died: RabbitMQ requeues them);
        returns how many."""
        for _, message in dropped:
            self.drop(message)
        return len(dropped)

    def held(self, tier: str) -> list[str]:
        """Job ids of ``tier`` the pool holds now."""
        return [job_id for t, job_id in self._held.values() if t == tier and job_id]

    async def publish(self) -> None:
        """Write one key per tier (TTL :data:`TTL_S`); Redis trouble is logged on change, never raised."""
        try:
            if self._redis is None:
                self._redis = connect(self._settings)
            async with self._redis.pipeline(transaction=False) as pipe:
                for tier in self.tiers:
                    pipe.set(key(self.prefix, tier, self.worker_id), SEPARATOR.join(self.held(tier)), ex=TTL_S)
                await pipe.execute()
        except Exception as exc:  # noqa: BLE001 - the pool works on; the reconciler skips rounds meanwhile
            if not self._failing:
                event(log, "worker.inflight_publish_failed", logging.WARNING, worker_id=self.worker_id,
                      error=f"{type(exc).__name__}: {exc}")
            self._failing = True
            return
        if self._failing:
            event(log, "worker.inflight_publish_resumed", worker_id=self.worker_id)
        self._failing = False

    async def close(self) -> None:
        """Delete this pool's keys (best effort: they expire anyway) and close the client."""
        if self._redis is None:
            return
        try:
            await self._redis.delete(*(key(self.prefix, t, self.worker_id) for t in self.tiers))
        except Exception:  # noqa: BLE001 - the keys expire within TTL_S
            pass
        finally:
            await self._redis.aclose()
            self._redis = None
