"""Reconciliation: a published job survives RabbitMQ losing its message (purge, queue delete, reset).

Postgres knows every committed job and whether it has started; RabbitMQ is only a cache of the
published ones. One round, per tier queue, in one relay at a time (``pg_try_advisory_xact_lock``
for the round's transaction):

1. ``cut`` = Postgres's clock; ``ready`` = the queue's ready messages by passive declare (a missing
   queue counts 0 and is declared again; a queue that cannot be read at all leaves its tier out of the
   round, ``relay.reconcile_tier_skipped``, and the other tiers go on); after :data:`INFLIGHT_SETTLE_S`
   (so every pool has published once since), ``inflight`` = the job ids the worker pools hold, from Redis
   (:mod:`tierbox.workers.inflight`). Redis unreachable: the round is skipped, never run blind.
2. ``owed`` = jobs of the tier ``published`` before ``cut``, not started, not pending;
   ``shortfall = owed - ready - |inflight ∩ owed|``. If positive, the candidates are the oldest
   owed jobs published longer ago than the tier's grace that no pool holds, at most ``shortfall``
   and at most ``reconcile_batch``.
3. A candidate is republished only if it was a candidate of the previous round too (kept in Redis
   for two intervals), so a message that moved from the queue into a pool between the reads is
   never taken for lost. ``force`` (operators) skips this rule, never the grace.
4. Republish = ``REPUBLISH``: its pending row again (the relay publishes it through the normal
   confirmed path, which refreshes ``published_at``) and a row in ``outbox.republished``.

A duplicate (the lost message was not lost after all) is absorbed by the ledger: ``start_attempt``
answers ``running`` or ``finished`` to the second copy. See docs/reliability.md for the figures.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import aio_pika
import aiormq
import msgspec
import psycopg
import redis.asyncio as aioredis

from outbox import _keepalive as keepalive
from outbox import _transitions as transitions
from outbox._logs import event
from outbox._sql import run_async
from outbox.config import Settings
from tierbox.flow.gate import connect
from tierbox.relay import counters as metrics
from tierbox.relay import queries
from tierbox.workers import inflight

log = logging.getLogger("tierbox.relay")

#: Wait between reading the queues and reading the pools' sets: every pool publishes once meanwhile,
#: so a message delivered before the queue was read is in some pool's set (or started).
INFLIGHT_SETTLE_S = inflight.PUBLISH_INTERVAL_S + 0.5
#: Previous-round candidates live this many intervals (a round missed by a busy relay still counts).
CANDIDATES_TTL_INTERVALS = 2.0
#: Interval assumed for the candidates' lifetime when automatic rounds are disabled (manual rounds).
MANUAL_INTERVAL_S = 10.0
#: ``Round.skipped`` when another relay's (or operator's) round holds the lock.
SKIPPED_LOCKED = "another relay's round holds the lock"


class TierRound(msgspec.Struct, kw_only=True):
    """What one round found for one tier and what it republished (or would, in a dry run)."""

    tier: str
    owed: int
    ready: int
    held: int
    shortfall: int
    candidates: list[uuid.UUID]
    republished: list[uuid.UUID]
    dry_run: bool = False


class Round(msgspec.Struct, kw_only=True):
    """One round: ``skipped`` says why nothing was looked at (another relay's round, Redis down)."""

    tiers: list[TierRound] = msgspec.field(default_factory=list)
    skipped: str | None = None
    #: Tiers left out of this round because their queue could not be read (tier -> the broker's error).
    skipped_tiers: dict[str, str] = msgspec.field(default_factory=dict)

    @property
    def republished(self) -> int:
        """Jobs republished (0 in a dry run)."""
        return sum(len(t.republished) for t in self.tiers if not t.dry_run)


def relay_actor() -> str:
    """The actor of automatic rounds: this relay process."""
    return f"relay {socket.gethostname()}:{os.getpid()}"


class Reconciler:
    """Runs reconciliation rounds. Build with :meth:`open` (broker, Redis) or :meth:`connect` (and Postgres)."""

    def __init__(self, settings: Settings, connection: aio_pika.abc.AbstractConnection, redis: aioredis.Redis,
                 actor: str, reason: str = "reconcile", db: psycopg.AsyncConnection[Any] | None = None) -> None:
        self.settings = settings
        self.connection = connection
        self.redis = redis
        self.actor = actor
        self.reason = reason
        self.db = db

    @classmethod
    async def open(cls, settings: Settings, actor: str, reason: str = "reconcile") -> Reconciler:
        """A reconciler whose rounds run on the caller's Postgres connection (:meth:`round`)."""
        name = f"tierbox-reconcile {settings.queue_prefix}".strip()
        from outbox._brokers import connect as connect_broker  # failover over TIERBOX_AMQP_URL's nodes
        connection = await connect_broker(settings.amqp_url, client_properties={"connection_name": name})
        return cls(settings, connection, connect(settings), actor, reason)

    @classmethod
    async def connect(cls, settings: Settings, actor: str | None = None) -> Reconciler:
        """The relay's reconciler: its own Postgres connection too, for :meth:`run_once`."""
        db = await psycopg.AsyncConnection.connect(settings.psycopg_url, application_name="tierbox-reconcile")
        await keepalive.apply_async(db)
        try:
            self = await cls.open(settings, actor or relay_actor())
        except BaseException:
            await db.close()
            raise
        self.db = db
        return self

    async def close(self) -> None:
        """Close what :meth:`open` and :meth:`connect` opened (idempotent)."""
        if not self.connection.is_closed:
            await self.connection.close()
        await self.redis.aclose()
        if self.db is not None and not self.db.closed:
            await self.db.close()

    async def run_once(self) -> int:
        """One automatic round in its own transaction; returns how many jobs it republished."""
        if self.db is None:
            raise RuntimeError("run_once needs a reconciler built with Reconciler.connect")
        async with self.db.transaction():
            done = await self.round(self.db)
        return done.republished

    async def round(self, conn: Any, tiers: Iterable[str] | None = None, *, dry_run: bool = False,
                    force: bool = False) -> Round:
        """One round on ``conn``, in the caller's transaction (it holds the lock until it ends)."""
        key = f"tierbox.reconcile {self.settings.queue_prefix}"
        if not (await run_async(conn, queries.RECONCILE_LOCK, {"key": key}))[0].taken:
            return Round(skipped=SKIPPED_LOCKED)
        names = list(tiers or self.settings.topology.tiers)
        cut = (await run_async(conn, queries.DB_NOW))[0].now
        ready: dict[str, int] = {}
        skipped_tiers: dict[str, str] = {}
        for tier in names:
            try:
                ready[tier] = await self._ready(tier)
            except aiormq.exceptions.ChannelClosed as exc:
                # The broker refused this queue (404: a classic queue whose home node is down; 405: an exclusive
                # queue of that name; 403): that must not stop the round for every other tier. Anything else
                # (a closed connection, a timeout) propagates: the caller reconnects. A reset under a running
                # relay showed why: a catch-all skipped every tier on a dead connection, round after round.
                skipped_tiers[tier] = f"{type(exc).__name__}: {exc}"
                event(log, "relay.reconcile_tier_skipped", logging.WARNING, tier=tier,
                      queue=self.settings.queue_name(tier), error=skipped_tiers[tier])
        names = [tier for tier in names if tier in ready]
        await asyncio.sleep(INFLIGHT_SETTLE_S)
        try:
            held = {tier: await self._inflight(tier) for tier in names}
            previous = {tier: await self._previous(tier) for tier in names}
        except Exception as exc:  # noqa: BLE001 - without the pools' sets every buffered message looks lost
            metrics.RECONCILE_SKIPPED.inc()
            event(log, "relay.reconcile_skipped", logging.WARNING, reason="redis unreachable",
                  error=f"{type(exc).__name__}: {exc}")
            return Round(skipped=f"Redis unreachable ({type(exc).__name__})")
        done = Round(skipped_tiers=skipped_tiers)
        for tier in names:
            found = await self._tier(conn, tier, cut, ready[tier], held[tier], previous[tier], dry_run, force)
            done.tiers.append(found)
        return done

    async def _tier(self, conn: Any, tier: str, cut: Any, ready: int, held: list[str], previous: set[uuid.UUID],
                    dry_run: bool, force: bool) -> TierRound:
        owed = (await run_async(conn, queries.OWED, {"tier": tier, "cut": cut, "inflight": held}))[0]
        shortfall = owed.owed - ready - owed.held
        candidates: list[uuid.UUID] = []
        if shortfall > 0:
            rows = await run_async(conn, queries.CANDIDATES, {
                "tier": tier, "cut": cut, "grace_s": self.settings.reconcile_grace(tier), "inflight": held,
                "limit": min(shortfall, self.settings.reconcile_batch)})
            candidates = [r.job_id for r in rows]
            event(log, "relay.reconcile_shortfall", tier=tier, owed=owed.owed, ready=ready, held=owed.held,
                  shortfall=shortfall, candidates=len(candidates))
        chosen = candidates if force else [c for c in candidates if c in previous]
        found = TierRound(tier=tier, owed=owed.owed, ready=ready, held=owed.held, shortfall=shortfall,
                          candidates=candidates, republished=chosen, dry_run=dry_run)
        if dry_run:
            return found
        await self._remember(tier, candidates)
        if chosen:
            found.republished = await self._republish(conn, tier, chosen)
        return found

    async def _republish(self, conn: Any, tier: str, ids: list[uuid.UUID]) -> list[uuid.UUID]:
        rows = await run_async(conn, transitions.REPUBLISH, {
            "ids": ids, "tier": tier, "grace_s": self.settings.reconcile_grace(tier), "reason": self.reason,
            "actor": self.actor})
        done = [r.job_id for r in rows]
        if done:
            metrics.REPUBLISHED.labels(tier).inc(len(done))
            event(log, "relay.republished", logging.WARNING, tier=tier, count=len(done), first_job_id=done[0],
                  reason=self.reason, actor=self.actor)
        return done

    async def _ready(self, tier: str) -> int:
        """Ready messages of the tier's queue; a missing queue is declared again and counts 0."""
        channel = await self.connection.channel()
        try:
            queue = await channel.declare_queue(self.settings.queue_name(tier), passive=True)
            return int(queue.declaration_result.message_count or 0)
        except aiormq.exceptions.ChannelNotFoundEntity:
            from outbox._amqp import declare_topology  # deferred, as in Relay.connect

            event(log, "relay.queue_missing", logging.WARNING, tier=tier, queue=self.settings.queue_name(tier))
            await declare_topology(self.connection, self.settings, [tier])
            return 0
        finally:
            if not channel.is_closed:
                await channel.close()

    async def _inflight(self, tier: str) -> list[str]:
        """Job ids of ``tier`` every live pool holds."""
        return await inflight.read_held(self.redis, self.settings.queue_prefix, tier)

    def _candidates_key(self, tier: str) -> str:
        return f"tierbox:{self.settings.queue_prefix}:reconcile:candidates:{tier}"

    async def _previous(self, tier: str) -> set[uuid.UUID]:
        value = await self.redis.get(self._candidates_key(tier))
        return {uuid.UUID(i) for i in inflight.split_ids(value)} if value else set()

    async def _remember(self, tier: str, candidates: list[uuid.UUID]) -> None:
        if not candidates:
            await self.redis.delete(self._candidates_key(tier))
            return
        interval = self.settings.reconcile_interval_s or MANUAL_INTERVAL_S
        ttl = math.ceil(interval * CANDIDATES_TTL_INTERVALS + INFLIGHT_SETTLE_S)
        await self.redis.set(self._candidates_key(tier), inflight.SEPARATOR.join(map(str, candidates)), ex=ttl)

