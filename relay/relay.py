"""The relay: publishes due outbox rows to their tier queues, with publisher confirms.

One batch is one Postgres transaction:

1. claim up to ``relay_batch_size`` due rows of ``outbox.pending``, most
   urgent tier first, ``FOR UPDATE SKIP LOCKED`` (so any number of relays
   share a backlog without blocking each other or publishing a row twice
   concurrently);
2. publish them all at once (pipelined), ``mandatory`` set, each awaiting
   its own confirm;
3. delete the confirmed rows from ``pending`` and stamp ``jobs.published_at``;
   rows that were nacked, returned (unroutable), timed out or caught in a
   closed channel stay pending with a short back-off;
4. commit.

Broker faults: a publish returned because its tier's queue is gone (deleted, or wiped by a
reset) makes the relay declare the topology again (:meth:`Relay.redeclare`), the rows going
out again after ``relay_retry_delay_s``; a connection the broker blocks (``connection.blocked``,
a memory or disk alarm) claims nothing until it is unblocked (:meth:`Relay.hold_while_blocked`).

A relay process runs several lanes, each a ``Relay`` with its own Postgres
and AMQP connections: the main lane claims every
tier, the urgent lanes (:meth:`Relay.lane`, ``relay_urgent_lanes`` of them) only rows of urgent
weight, so an urgent row never waits behind a batch of BULK rows in flight, nor behind another
urgent batch waiting for its confirms (:class:`~tierbox.relay.wakeup.LaneGroup`).

Guarantee: at least once. A row leaves ``pending`` only after the broker
confirmed it and did not return it. If the relay dies after a confirm but
before the commit, the claim rolls back and the row is published again; the
worker absorbs the duplicate by job id (the ledger says it already finished,
or a lease says it is running). Rows past ``expires_at`` are marked
``expired`` instead of being published.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aio_pika
import aiormq
import psycopg

from outbox import _encoding as encoding
from outbox import _keepalive as keepalive
from outbox import _plans as plans
from outbox import _tracing as tracing
from outbox import _transitions as transitions
from outbox._logs import clip, event
from outbox._rows import ClaimedRow
from outbox._runtime import wait_any
from outbox._sql import Statement, run_async
from outbox.config import Settings
from tierbox.relay import celery_protocol, queries
from tierbox.relay import counters as metrics
from tierbox.relay.queries import LagRow

log = logging.getLogger("tierbox.relay")

#: Fault-injection seam for the crash tests: seconds the main lane sleeps after confirms, before commit.
PAUSE_BEFORE_COMMIT_ENV = "TIERBOX_FAULT_RELAY_PAUSE_BEFORE_COMMIT_S"
#: Fault-injection seam for the urgent lanes' tests: seconds that the first urgent batch of a relay
#: process to publish anything sleeps after its confirms, before commit (once, whichever lane runs it).
PAUSE_URGENT_ONCE_ENV = "TIERBOX_FAULT_RELAY_PAUSE_URGENT_ONCE_S"
#: Benchmark instrumentation (bench/latency.py sets it): one ``relay.hop`` log line per published job with
#: the wall-clock times of its way through the lane. Off, it costs one boolean test per batch.
HOPS_ENV = "TIERBOX_BENCH_HOPS"
HOPS = os.environ.get(HOPS_ENV) == "1"
#: A batch's transaction commits without waiting for its WAL flush (``synchronous_commit = off`` for
#: that transaction only). Its commit releases job rows a worker's start is waiting for, so the flush
#: was on the path of every job (measured: confirmed -> committed 1.9 ms at the median on an idle
#: box). Nothing is traded: a commit lost in a Postgres crash leaves the batch's rows pending and the
#: jobs as they were, exactly the state of a relay killed between confirm and commit (at least once:
#: republished, the copy absorbed by the ledger; tests/relay test_relay_killed_between_confirm_and_commit),
#: and any later durable commit that saw it (a worker's start) flushes it first (the WAL is written in
#: order). ``TIERBOX_BENCH_RELAY_SYNC_COMMIT=1`` turns it off (the benchmark's A/B only).
#: Crash-tested: tests/relay/test_postgres_crash.py crashes a private Postgres (SIGQUIT, as ``pg_ctl stop -m
#: immediate``) right after a batch's asynchronous commit is visible, checks that commits were lost (rows
#: pending again), then that every job still runs exactly once; and crashes it under a running relay + worker.
ASYNC_COMMIT = os.environ.get("TIERBOX_BENCH_RELAY_SYNC_COMMIT") != "1"
_SYNC_COMMIT_OFF = "SET LOCAL synchronous_commit = off"
#: Least seconds between two re-declarations of the topology after returned publishes.
REDECLARE_MIN_INTERVAL_S = 1.0
#: While blocked, how often a lane checks that its connections are still alive, seconds.
BLOCKED_CHECK_S = 1.0


class PublishOutcome:
    """What happened to one batch: confirmed ids and failed ids with their error."""

    __slots__ = ("confirmed", "failed", "tiers")

    def __init__(self) -> None:
        self.confirmed: list[uuid.UUID] = []
        self.failed: dict[uuid.UUID, str] = {}
        self.tiers: dict[uuid.UUID, str] = {}


class Relay:
    """Moves pending rows to RabbitMQ. Build with :meth:`connect`; drive with :meth:`run_once`."""

    def __init__(self, settings: Settings, db: psycopg.AsyncConnection[Any],
                 connection: aio_pika.abc.AbstractConnection, channel: aio_pika.abc.AbstractChannel,
                 exchange: aio_pika.abc.AbstractExchange, min_weight: int = 0) -> None:
        self.settings = settings
        self.db = db
        self.connection = connection
        self.channel = channel
        self.exchange = exchange
        #: Claims only rows of at least this weight (0: every tier).
        self.min_weight = min_weight
        self.published_total = 0
        self._redeclare_after = 0.0  # monotonic time before which returns do not re-declare again
        self._pause_before_commit_s = float(os.environ.get(PAUSE_BEFORE_COMMIT_ENV) or 0)
        #: Shared by a process's urgent lanes (:data:`PAUSE_URGENT_ONCE_ENV`): the first batch to publish pops it.
        self.pause_once: list[float] = []
        #: When the lane's wake-up for this batch arrived (set by the lane only while :data:`HOPS`).
        self.woken_at = 0.0
        #: After a batch that was not full: seconds until the lane's next pending row is due (<= 0:
        #: due now, held by another batch), None if nothing is pending; read in the batch's transaction.
        self.next_due_s: float | None = None
        #: The last claim took a whole ``relay_batch_size``: more may be due at once.
        self.full = False

    @classmethod
    async def connect(cls, settings: Settings, *, min_weight: int = 0, lane: str = "", declare: bool = False) -> Relay:
        """Open the Postgres and RabbitMQ connections; the main relay also checks the schema revision,
        mirrors the tiers and declares the topology (a ``lane`` relies on its main relay having done
        so, unless ``declare``: a lane in a process of its own does all three, as it may start first)."""
        from outbox._amqp import declare_topology  # deferred: keeps `import relay` light
        from outbox._maintenance import check_schema_async, sync_tiers_async

        role = f"tierbox-relay{'-' + lane if lane else ''}"
        db = await psycopg.AsyncConnection.connect(settings.psycopg_url, application_name=role)
        await keepalive.apply_async(db)  # a cut-off relay's claimed rows are freed in ~20 s (outbox._keepalive)
        await plans.apply_async(db)  # by-id statements on the partitioned history: planned once (outbox._plans)
        connection: aio_pika.abc.AbstractConnection | None = None
        declares = declare or not lane
        try:
            if declares:  # a lane in the main relay's process relies on its checks, as on its topology
                async with db.transaction():
                    await check_schema_async(db)  # rolled out before `tierbox migrate`: says so, and retries
                    await sync_tiers_async(db, settings.topology)
            name = f"{role} {settings.queue_prefix}".strip()  # the prefix lets tests find their own
            from outbox._brokers import connect as connect_broker  # failover over TIERBOX_AMQP_URL's nodes
            connection = await connect_broker(settings.amqp_url, client_properties={"connection_name": name})
            if declares:
                await declare_topology(connection, settings)
            channel = await connection.channel(publisher_confirms=True, on_return_raises=False)
            exchange = await channel.get_exchange(settings.exchange_name, ensure=False)
        except BaseException:
            if connection is not None:
                await connection.close()
            await db.close()
            raise
        return cls(settings, db, connection, channel, exchange, min_weight=min_weight)

    async def lane(self, min_weight: int) -> Relay:
        """A second relay (own AMQP connection, own Postgres connection) that claims only rows of at
        least ``min_weight``.

        Its own AMQP connection, not a channel on this one: frames of one connection reach the
        broker in order, so an urgent publish on a shared socket would queue behind the main lane's
        500 BULK frames (measured under a 100,000-job backlog: CRITICAL p99 570 ms shared).
        """
        return await Relay.connect(self.settings, min_weight=min_weight, lane="urgent")

    async def close(self) -> None:
        """Close both connections (idempotent)."""
        if not self.connection.is_closed:
            await self.connection.close()
        if not self.db.closed:
            await self.db.close()

    @property
    def healthy(self) -> bool:
        """False once either connection is gone; the caller then reconnects."""
        return not (self.db.closed or self.db.broken or self.connection.is_closed or self.channel.is_closed)

    async def run_once(self) -> int:
        """Claim, publish and commit one batch; returns how many rows it took off ``pending``.

        The batch's statements go in pipeline mode: BEGIN and the claim in one round trip, the
        bookkeeping, the lane's next due time (:attr:`next_due_s`) and COMMIT in a second one (an
        empty claim: the same two), where one statement each took six.
        """
        began = time.monotonic()
        hops = [time.time()] if HOPS else None
        self.next_due_s = None
        async with self.db.pipeline():
            async with self.db.transaction():
                if ASYNC_COMMIT:
                    await self.db.execute(_SYNC_COMMIT_OFF)
                claim = await self.db.execute(transitions.CLAIM.pg, {"limit": self.settings.relay_batch_size,
                                                                     "min_weight": self.min_weight}, prepare=True)
                rows = [ClaimedRow(*r) for r in await claim.fetchall()]
                self.full = len(rows) >= self.settings.relay_batch_size
                outcome, expired = PublishOutcome(), []
                if rows:
                    expired = [r.job_id for r in rows if r.expired]
                    live = [r for r in rows if not r.expired]
                    if hops is not None:
                        hops.append(time.time())
                    outcome = await self.publish(live)
                    if hops is not None:
                        hops.append(time.time())
                    # Main lane only: a test holds a batch in flight and watches the urgent lane go past it.
                    if outcome.confirmed and self._pause_before_commit_s and self.min_weight == 0:
                        await asyncio.sleep(self._pause_before_commit_s)
                    if outcome.confirmed and self.pause_once:
                        await asyncio.sleep(self.pause_once.pop())
                    await self._record(outcome, expired)
                # A full batch is followed by another claim at once; otherwise the lane waits until this.
                due = (await self.db.execute(queries.NEXT_DUE_IN.pg, {"min_weight": self.min_weight}, prepare=True)
                       if not self.full else None)
        if due is not None:
            first = await due.fetchone()  # synced with the COMMIT: no round trip of its own
            self.next_due_s = first[0] if first else None
        if not rows:
            return 0
        if hops is not None:
            self._log_hops(outcome, hops)
        self.published_total += len(outcome.confirmed)
        for tier in outcome.tiers.values():  # counted once committed, not merely confirmed
            metrics.PUBLISHED.labels(tier).inc()
        metrics.EXPIRED.inc(len(expired))
        metrics.BATCH.observe(time.monotonic() - began)
        return len(outcome.confirmed) + len(expired)

    def _log_hops(self, outcome: PublishOutcome, hops: list[float]) -> None:
        """One ``relay.hop`` line per confirmed job: woken, batch began, claimed, confirmed, committed."""
        committed = time.time()
        for job_id in outcome.confirmed:
            event(log, "relay.hop", job_id=job_id, woken=f"{self.woken_at:.6f}", began=f"{hops[0]:.6f}",
                  claimed=f"{hops[1]:.6f}", confirmed=f"{hops[2]:.6f}", committed=f"{committed:.6f}")

    async def drain(self, max_batches: int = 10_000) -> int:
        """Run batches until nothing is due; returns the rows handled (tests, demo)."""
        total = 0
        for _ in range(max_batches):
            n = await self.run_once()
            total += n
            if n == 0:
                break
        return total

    async def publish(self, rows: Sequence[ClaimedRow]) -> PublishOutcome:
        """Publish claimed rows concurrently; each result is a confirm, a return or an error."""
        outcome = PublishOutcome()
        if not rows:
            return outcome
        results = await asyncio.gather(*(self._publish_one(r) for r in rows), return_exceptions=True)
        returned: set[str] = set()
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, aiormq.spec.Basic.Ack):
                outcome.confirmed.append(row.job_id)
                outcome.tiers[row.job_id] = row.tier
            else:
                outcome.failed[row.job_id] = _describe(result)
                _count_failure(row.tier, result)
                # A Celery queue is the Celery workers' to declare: its row just stays pending.
                if isinstance(result, aiormq.abc.DeliveredMessage) and celery_protocol.route_of(row.headers) is None:
                    returned.add(row.tier)
        if returned:
            await self.redeclare(returned)
        if any(isinstance(r, aiormq.exceptions.DeliveryError) for r in results):
            await self._new_channel()
        return outcome

    async def _new_channel(self) -> None:
        """Publish on a new channel from now on (at most once a second): on RabbitMQ 3.10, a channel
        that published to a quorum queue while its leader's node had just died keeps getting every
        publish to it nacked after a new leader is elected; a new channel publishes at once
        (measured on a three-node cluster: nacks for 30 s on the old channel, a new one confirmed).
        Nacks for other reasons (a full queue) cost one channel open a second."""
        if time.monotonic() < getattr(self, "_new_channel_after", 0.0) or self.connection.is_closed:
            return
        self._new_channel_after = time.monotonic() + REDECLARE_MIN_INTERVAL_S
        old = self.channel
        try:
            self.channel = await self.connection.channel(publisher_confirms=True, on_return_raises=False)
            self.exchange = await self.channel.get_exchange(self.settings.exchange_name, ensure=False)
        except Exception as exc:  # noqa: BLE001 - the old channel stays; the rows are pending either way
            self.channel = old
            event(log, "relay.channel_reopen_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return
        if not old.is_closed:
            await old.close()

    async def redeclare(self, tiers: set[str]) -> None:
        """Declare the queues of ``tiers`` (and the exchanges) again: the broker returned publishes
        routed to them, so their queue or binding is gone (deleted, or wiped by a reset).

        The returned rows stay pending and are published again after ``relay_retry_delay_s``. At
        most once per :data:`REDECLARE_MIN_INTERVAL_S`; tiers this relay's topology does not know
        (rows of a tier removed from the topology) are left alone: declaring cannot route them.
        """
        from outbox._amqp import declare_topology  # deferred, as in connect

        known = sorted(t for t in tiers if t in self.settings.topology.tiers)
        if not known or time.monotonic() < self._redeclare_after:
            return
        self._redeclare_after = time.monotonic() + REDECLARE_MIN_INTERVAL_S
        try:
            await declare_topology(self.connection, self.settings, known)
        except Exception as exc:  # noqa: BLE001 - the rows stay pending either way; the next return tries again
            event(log, "relay.redeclare_failed", logging.WARNING, tiers=",".join(known),
                  error=f"{type(exc).__name__}: {exc}")
            return
        event(log, "relay.topology_redeclared", logging.WARNING, tiers=",".join(known))

    @property
    def blocked(self) -> bool:
        """True while the broker blocks this relay's connection (``connection.blocked`` until
        ``connection.unblocked``: a memory or disk alarm). RabbitMQ blocks a connection at its first
        publish under an alarm, so the batch in flight then times out (its rows stay pending)."""
        unblocked = _unblocked_event(self.connection)
        return unblocked is not None and not unblocked.is_set()

    async def hold_while_blocked(self, stop: asyncio.Event) -> None:
        """While :attr:`blocked`, claim nothing: wait, without CPU or publish attempts, until the
        broker unblocks the connection, the connection drops, or ``stop``."""
        unblocked = _unblocked_event(self.connection)
        if unblocked is None or unblocked.is_set():
            return
        lane = "urgent" if self.min_weight else "main"
        event(log, "relay.blocked", logging.WARNING, lane=lane)
        metrics.BLOCKED.inc()
        began = time.monotonic()
        try:
            while not (stop.is_set() or unblocked.is_set()) and self.healthy:
                # Each round refreshes the lane's row of outbox.relay_blocks (what tier_health and the
                # admin API's /metrics read): a row not refreshed for 30 s (this relay died) stops counting.
                await self._note_block(queries.BLOCK_SEEN, lane)
                await wait_any(stop, unblocked, timeout_s=BLOCKED_CHECK_S)
        finally:
            metrics.BLOCKED.dec()
            await self._note_block(queries.BLOCK_CLEARED, lane)
        event(log, "relay.unblocked", lane=lane, blocked_s=round(time.monotonic() - began, 3))

    async def _note_block(self, statement: Statement[tuple[Any, ...]], lane: str) -> None:
        """Run ``statement`` (:data:`~tierbox.relay.queries.BLOCK_SEEN` or ``BLOCK_CLEARED``) for this lane in
        a transaction of its own. A Postgres error is logged, not raised: the hold matters more than its
        report, and a row left behind goes stale by itself."""
        if self.db.closed or self.db.broken:  # the lane reconnects after the hold; nothing to tell it here
            return
        try:
            async with self.db.transaction():
                await run_async(self.db, statement, {"relay_id": relay_id(), "lane": lane})
        except psycopg.Error as exc:
            event(log, "relay.block_record_failed", logging.WARNING, lane=lane, statement=statement.name,
                  error=clip(f"{type(exc).__name__}: {exc}", 200))

    async def _publish_one(self, row: ClaimedRow) -> Any:
        if tracing.enabled():
            return await self._publish_traced(row)
        return await self._publish_row(row)

    async def _publish_traced(self, row: ClaimedRow) -> Any:
        """:meth:`_publish_row` inside the message's ``send`` span (docs/tracing.md)."""
        headers = encoding.decode_headers(row.headers) if row.headers != "{}" else {}
        with tracing.sending(row.job_id, row.task, row.tier, row.attempts + 1, headers,
                             self.exchange.name) as span:
            result = await self._publish_row(row)
            if not isinstance(result, aiormq.spec.Basic.Ack):
                tracing.unconfirmed(span, "returned" if isinstance(result, aiormq.abc.DeliveredMessage)
                                    else type(result).__name__)
            return result

    async def _publish_row(self, row: ClaimedRow) -> Any:
        exchange, routing_key = self.exchange.name, row.tier
        celery = celery_protocol.route_of(row.headers)  # a job of outbox.celery_task: Celery's format and queue
        if celery is not None:
            body, properties = celery_protocol.build(row, celery)
            exchange, routing_key = celery.exchange, celery.routing_key
        else:
            body, properties = build_publish(row.job_id, row.task, row.tier, row.priority, row.payload, row.headers,
                                             row.attempts, row.enqueued_at)
        if self.channel.is_closed:
            raise aiormq.exceptions.ChannelInvalidStateError(f"{self.channel!r} closed")
        # Straight to aiormq (what aio-pika's Exchange.publish calls after building an
        # aio_pika.Message): the same frames and confirm/return results, without a Message object
        # per row (measured: build_message was ~10% of the relay's CPU).
        underlay = await self.channel.get_underlay_channel()
        return await underlay.basic_publish(
            body, exchange=exchange, routing_key=routing_key, properties=properties, mandatory=True,
            timeout=self.settings.relay_confirm_timeout_s,
        )

    async def _record(self, outcome: PublishOutcome, expired: list[uuid.UUID]) -> None:
        if outcome.confirmed and expired:
            await run_async(self.db, transitions.LOCK_JOBS, {"ids": [*outcome.confirmed, *expired]})
        if outcome.confirmed:
            await run_async(self.db, transitions.MARK_PUBLISHED, {"ids": outcome.confirmed})
        if expired:
            await run_async(self.db, transitions.MARK_EXPIRED, {"ids": expired})
            event(log, "relay.expired", count=len(expired), first_job_id=expired[0])
        for error, ids in _group(outcome.failed).items():
            await run_async(self.db, transitions.MARK_PUBLISH_FAILED,
                            {"ids": ids, "delay_s": self.settings.relay_retry_delay_s, "error": error})
            event(log, "relay.publish_failed", logging.WARNING, count=len(ids), first_job_id=ids[0], error=error)
        if outcome.confirmed:
            event(log, "relay.batch_published", logging.DEBUG, count=len(outcome.confirmed))

    async def next_due_in(self) -> float | None:
        """Seconds until the earliest pending row is due (<= 0: due now); None if none."""
        async with self.db.transaction():
            rows = await run_async(self.db, queries.NEXT_DUE_IN, {"min_weight": self.min_weight})
        return rows[0].due_in_s if rows else None

    async def lag(self) -> dict[str, LagRow]:
        """Per tier: due rows not yet published and the age in seconds of the oldest."""
        async with self.db.transaction():
            rows = await run_async(self.db, queries.LAG)
        return {r.tier: LagRow(r.tier, int(r.due), float(r.oldest_s)) for r in rows}


def relay_id() -> str:
    """This relay process in ``outbox.relay_blocks``: ``hostname:pid`` (as the reconciler names its actor)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def build_publish(job_id: uuid.UUID, task: str, tier: str, priority: int, payload: str, headers: str,
                  attempts: int, enqueued_at: dt.datetime | None) -> tuple[bytes, aiormq.spec.Basic.Properties]:
    """Body (the versioned envelope) and AMQP properties of the persistent message for one job."""
    amqp_headers: dict[str, Any] = {}
    if headers != "{}":  # the common case: no user headers, nothing to decode
        user_headers: dict[str, Any] = encoding.decode_headers(headers)
        # The trace context stored at enqueue (outbox._tracing), unchanged; no other user header.
        amqp_headers.update((k, v) for k, v in user_headers.items() if k in tracing.RESERVED_HEADERS)
    amqp_headers[encoding.HEADER_TASK] = task
    amqp_headers[encoding.HEADER_TIER] = tier
    amqp_headers[encoding.HEADER_ATTEMPT] = attempts + 1
    amqp_headers[encoding.HEADER_ENQUEUED_AT] = enqueued_at.isoformat() if enqueued_at else ""
    properties = aiormq.spec.Basic.Properties(
        content_type=encoding.CONTENT_TYPE,
        delivery_mode=int(aio_pika.DeliveryMode.PERSISTENT),
        message_id=str(job_id),
        priority=priority,
        headers=amqp_headers,
        timestamp=enqueued_at,
    )
    return encoding.encode_envelope(job_id, task, tier, payload, enqueued_at), properties


def build_message(job_id: uuid.UUID, task: str, tier: str, priority: int, payload: str, headers: str,
                  attempts: int, enqueued_at: dt.datetime | None) -> aio_pika.Message:
    """:func:`build_publish` as an ``aio_pika.Message`` (tests and the benchmark's raw publisher)."""
    body, p = build_publish(job_id, task, tier, priority, payload, headers, attempts, enqueued_at)
    return aio_pika.Message(body=body, content_type=p.content_type, delivery_mode=p.delivery_mode,
                            message_id=p.message_id, priority=p.priority, headers=p.headers,
                            timestamp=p.timestamp)


def _unblocked_event(connection: aio_pika.abc.AbstractConnection) -> asyncio.Event | None:
    """aiormq's own "not blocked" event of ``connection`` (None if this aiormq has none).

    aiormq reads ``connection.blocked``/``unblocked`` into this private event and exposes it only
    through ``Connection.ready()``, which waits on it (aio-pika issue #506: no public hook). The
    relay tests' blocked case fails if an upgrade renames it.
    """
    underlay: Any = getattr(connection.transport, "connection", None)
    unblocked = getattr(underlay, "_Connection__connection_unblocked", None)
    return unblocked if isinstance(unblocked, asyncio.Event) else None


def _count_failure(tier: str, result: Any) -> None:
    if isinstance(result, aio_pika.exceptions.DeliveryError):
        metrics.NACKED.labels(tier).inc()
    elif isinstance(result, aiormq.abc.DeliveredMessage):
        metrics.RETURNED.labels(tier).inc()
    else:
        metrics.FAILED.labels(tier).inc()


def _describe(result: Any) -> str:
    if isinstance(result, BaseException):
        return clip(f"{type(result).__name__}: {result}", 200) if str(result) else type(result).__name__
    if isinstance(result, aiormq.abc.DeliveredMessage):
        reply = getattr(result.delivery, "reply_text", "")  # a Basic.Return carries one
        return clip(f"returned by broker: {reply} (no queue bound for this tier)", 200)
    return clip(f"unexpected publish result {type(result).__name__}", 200)


def _group(failed: dict[uuid.UUID, str]) -> dict[str, list[uuid.UUID]]:
    out: dict[str, list[uuid.UUID]] = {}
    for job_id, error in failed.items():
        out.setdefault(error, []).append(job_id)
    return out
