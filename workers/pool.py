"""A worker pool: consumes its tier queues, runs jobs, records every outcome, then acks.

Each message becomes one :class:`~tierbox.workers.delivery.Delivery`, finished exactly once:
its outcome recorded in Postgres, its admission released, then the message acked (late: a crash
before the outcome is committed leaves it unacked, so RabbitMQ redelivers it; ``long=True``
tasks are acked once their lease is committed). A delivery's way through the pool is
:mod:`workers.processing`; this module holds the pool's life: connections, slots, chores, shutdown.
A slot is free once its handler has returned: the outcome is recorded and the message acked in
the finishing stage (:mod:`workers.finishing`), which drain and shutdown wait for like the slots.

Ordering between the pool's queues is decided by :mod:`workers.buffer`.
Leases are renewed by a heartbeat every ``lease_s / 3``; any worker's reaper
recovers leases that expire (worker killed, Postgres connection lost).
:meth:`Pool.drain` works until the pool has nothing left to do (:mod:`workers.drain`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import aio_pika
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import create_async_engine

from outbox import _keepalive as keepalive
from outbox import _plans as plans
from outbox._logs import event
from outbox._runtime import wait_any
from outbox.config import Settings
from outbox.errors import TopologyMismatchError
from outbox.registry import Registry
from outbox.tiers import PoolSpec
from tierbox.flow.admission import PAUSE_REFRESH_S, Admission
from tierbox.workers.buffer import PriorityBuffer
from tierbox.workers.consumers import CHECK_INTERVAL_S, unconsumed, watch_cancel
from tierbox.workers.delivery import Delivery
from tierbox.workers.dlq_sweeper import DlqSweeper
from tierbox.workers.drain import DRAIN_SETTLE_S, due_soon, ready_messages
from tierbox.workers.execute import Executor
from tierbox.workers.inflight import PUBLISH_INTERVAL_S, InflightReporter
from tierbox.workers.ledger import Ledger
from tierbox.workers.processing import HOPS, Processor

log = logging.getLogger("tierbox.worker")

#: Broker reconnect back-off: first wait and cap, seconds.
RECONNECT_FIRST_S = 0.5
#: Longest wait for one closing step of a stop (a consumer cancel, a client close), seconds: a peer
#: that never answers must not keep the process alive. Nothing is lost by giving up: the broker
#: requeues whatever the dropped connection had unacked, and leases cover started jobs.
CLOSE_TIMEOUT_S = 10.0
RECONNECT_MAX_S = 30.0
#: Seconds between two passes of the job-history partition maintenance (outbox._partitions.ensure).
PARTITIONS_INTERVAL_S = 3600.0


def new_worker_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Pool:
    """One pool of worker slots over one or more tier queues."""

    def __init__(self, settings: Settings, name: str, spec: PoolSpec, registry: Registry) -> None:
        self.settings = settings
        self.name = name
        self.spec = spec
        self.registry = registry
        self.worker_id = new_worker_id()
        weights = {t: settings.topology.spec(t).weight for t in spec.tiers}
        self.buffer = PriorityBuffer(weights, spec.min_share)
        # Async engine: one connection per running async attempt that takes ctx (its start_attempt,
        # the handler's transaction and its outcome share it), flow control's Postgres reads, a result
        # recorded for a webhook; Tierbox's own ledger statements have the ledger engine below. No
        # pre-ping (on either): a delivery's first statement (its start, alone or batched) is the liveness
        # check; a dead pooled connection fails it before any handler runs, SQLAlchemy then recycles
        # the whole pool, and Pool.process retries the delivery after a back-off.
        # Server-side keepalives on every connection (outbox._keepalive): a host cut off mid-transaction
        # releases its row locks in ~20 s instead of the kernel's two hours.
        self.async_engine = keepalive.on_connect(create_async_engine(
            settings.sqlalchemy_url, pool_size=spec.slots + 1, max_overflow=spec.slots, pool_pre_ping=False))
        # Sync engine: sync handlers' transactions, in threads, and their ctx.progress writes (each in
        # a short transaction of its own, while the handler's session holds its connection: hence up
        # to two per slot; the overflow ones are closed when returned). It keeps pre-ping: a sync
        # handler's first statement is the handler's own, and a dead connection there would be
        # recorded as a failed attempt rather than retried as infrastructure trouble.
        self.sync_engine = keepalive.on_connect(create_engine(settings.sqlalchemy_url, pool_size=spec.slots,
                                                              max_overflow=spec.slots, pool_pre_ping=True))
        # Ledger engine: only Tierbox's own statements (batched starts and sessionless successes, retries,
        # dead letters, heartbeat, reaper), so its connections can use generic plans (outbox._plans: a
        # by-id statement on the partitioned history is otherwise planned again on every execution).
        # Three steady connections (the two batchers' statements in flight and a chore); the overflow
        # covers the slots' retries, dead letters and lone starts of a burst of failures.
        self.ledger_engine = plans.on_connect(keepalive.on_connect(create_async_engine(
            settings.sqlalchemy_url, pool_size=3, max_overflow=spec.slots, pool_pre_ping=False)))
        self.ledger = Ledger(self.ledger_engine, self.worker_id, settings.lease_s)
        self.executor = Executor(self.async_engine, self.sync_engine, spec.slots, ledger_engine=self.ledger_engine)
        self.admission = Admission(settings, self.async_engine, registry.breakers)
        # The finishing stage holds only deliveries with an unacked message: the channels' QoS bounds it.
        self.processor = Processor(name, registry, self.ledger, self.admission, self.executor, self.buffer,
                                   finishing_bound=sum(self._qos(t) for t in spec.tiers))
        self.processor.finishing.done = self._let_go
        #: The job ids this pool holds, published to Redis for the relay's reconciler.
        self.inflight = InflightReporter(settings, self.worker_id, spec.tiers)
        #: Handles one delivery end to end, its finishing included (:meth:`Processor.process`).
        self.process = self.processor.process
        self.starts = self.processor.starts
        self.recorder = self.processor.recorder
        #: Deliveries by what happened to them (printed by ``worker.stopped``).
        self.counts = self.recorder.counts
        self._running = self.processor.running
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.sweeper: DlqSweeper | None = None
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._received = 0
        #: Deliveries taken from the buffer and not done with: in a slot, or in the finishing stage.
        self._in_hand = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self._chores_stop = asyncio.Event()
        #: Set when the current broker connection is to be dropped and made again (:meth:`start`).
        self._lost: asyncio.Event | None = None

    async def start(self) -> asyncio.Event:
        """Connect, declare the pool's queues and start consuming; the event is set if the connection drops
        or the broker cancels one of the pool's consumers (its queue was deleted, or a reset wiped it):
        :meth:`_connected` then starts over, which declares the queues again and re-subscribes."""
        from outbox._amqp import declare_topology
        from outbox._maintenance import check_schema_async

        async with self.async_engine.connect() as conn:  # rolled out before `tierbox migrate`: say so, retry
            await check_schema_async(conn)
        name = f"tierbox-worker {self.settings.queue_prefix}{self.name} {self.worker_id}"
        lost = self._lost = asyncio.Event()
        from outbox._brokers import connect as connect_broker  # failover over TIERBOX_AMQP_URL's nodes
        self.connection = await connect_broker(self.settings.amqp_url, client_properties={"connection_name": name})
        self.connection.close_callbacks.add(lambda *_: lost.set())
        self._consumers = []
        await declare_topology(self.connection, self.settings, list(self.spec.tiers))
        for tier in self.spec.tiers:
            channel = await self.connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self._qos(tier))
            queue = await channel.get_queue(self.settings.queue_name(tier), ensure=False)
            await watch_cancel(channel, queue.name, lost)
            tag = await queue.consume(self._receiver(tier))
            self._consumers.append((queue, tag))
        self.sweeper = DlqSweeper(self.settings, self.connection, self.ledger, list(self.spec.tiers))
        await self.sweeper.start(lost)
        event(log, "worker.started", pool=self.name, worker_id=self.worker_id, tiers=",".join(self.spec.tiers),
              concurrency=self.spec.concurrency, reserved=_spelled(self.spec.reserved),
              qos=",".join(f"{t}:{self._qos(t)}" for t in self.spec.tiers))
        return lost

    def _qos(self, tier: str) -> int:
        """Unacked messages the broker may hand this pool from ``tier``'s queue: every slot that may run
        it, plus ``prefetch`` waiting in the buffer."""
        return self.spec.concurrency + self.spec.reserved.get(tier, 0) + self.spec.prefetch

    async def _connected(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop``: reconnect with capped back-off whenever the broker connection drops.

        Messages buffered from a dead connection are forgotten (RabbitMQ redelivers them); jobs already
        running finish and record their outcome, and their failed ack is absorbed by the ledger later.
        """
        delay = RECONNECT_FIRST_S
        while not stop.is_set():
            try:
                lost = await self.start()
            except TopologyMismatchError:
                raise
            except Exception as exc:  # noqa: BLE001 - logged as one line, then retried
                event(log, "worker.connect_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}",
                      retry_in_s=delay)
                await self._close_connection()
                await wait_any(stop, timeout_s=delay)
                delay = min(delay * 2, RECONNECT_MAX_S)
                continue
            delay = RECONNECT_FIRST_S
            await wait_any(stop, lost)
            if not stop.is_set():
                buffered = self.buffer.drain()
                for _, message in buffered:  # benchmark stamps (HOPS) of messages no slot will take
                    self.processor.received.pop(id(message), None)
                dropped = self.inflight.forget(buffered)
                event(log, "worker.disconnected", logging.WARNING, buffered_dropped=dropped)
                await self._close_connection()

    async def _close_connection(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            with contextlib.suppress(Exception):
                await self.connection.close()

    def _receiver(self, tier: str) -> Any:
        async def receive(message: AbstractIncomingMessage) -> None:
            if HOPS:  # benchmark instrumentation: the hop "received -> taken by a slot" starts here, and
                # how many of the tier's messages the pool held unacked then says whether the QoS window was full
                self.processor.received[id(message)] = (time.time(), len(self.inflight.held(tier)), self._qos(tier))
            self._received += 1
            self.inflight.hold(tier, message)
            await self.buffer.put(tier, message.priority or 0, message)
        return receive

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set (reconnecting as needed), then shut down gracefully."""
        await self._refresh_pauses()
        slots = [asyncio.create_task(self._slot(), name=f"slot-{i}") for i in range(self.spec.concurrency)]
        slots += [asyncio.create_task(self._slot(only=tier), name=f"slot-{tier}-{i}")
                  for tier, count in self.spec.reserved.items() for i in range(count)]
        chores = [self._chore(self.settings.lease_s / 3, self._heartbeat, "heartbeat"),
                  self._chore(self.settings.reaper_interval_s, self._reap, "reap"),
                  self._chore(PAUSE_REFRESH_S, self._refresh_pauses, "pauses"),
                  self._chore(PUBLISH_INTERVAL_S, self.inflight.publish, "inflight"),
                  self._chore(PARTITIONS_INTERVAL_S, self._partitions, "partitions"),
                  self._chore(CHECK_INTERVAL_S, self._check_consumers, "consumers")]
        try:
            await self._connected(stop)
        finally:
            await self.shutdown(slots, chores)

    async def drain(self, stop: asyncio.Event | None = None, settle_s: float = DRAIN_SETTLE_S) -> dict[str, int]:
        """Work until the pool has nothing left to do, then shut down gracefully; returns :attr:`counts`.

        "Nothing left" is defined in :mod:`workers.drain`: two checks ``settle_s`` apart find the
        pool's queues without ready messages, its buffer empty, no delivery in hand, and no outbox
        row of its tiers due within ``settle_s``. ``stop`` (e.g. SIGTERM) ends it earlier, as for :meth:`run`.
        """
        stop = stop or asyncio.Event()
        watch = asyncio.create_task(self._stop_when_drained(stop, settle_s), name="drain")
        try:
            await self.run(stop)
        finally:
            watch.cancel()
            await asyncio.gather(watch, return_exceptions=True)
        return self.counts

    async def _stop_when_drained(self, stop: asyncio.Event, settle_s: float) -> None:
        seen: int | None = None  # deliveries received as of the last empty check (None: it was not empty)
        while not stop.is_set():
            await wait_any(stop, timeout_s=settle_s)
            received = self._received
            if not await self._empty(settle_s):
                seen = None
            elif seen == received:
                event(log, "worker.drained", pool=self.name, **self.counts)
                stop.set()
            else:
                seen = received

    async def _empty(self, settle_s: float) -> bool:
        """One check of :mod:`workers.drain`'s conditions (False while the pool is not consuming)."""
        if self.connection is None or self.connection.is_closed or not self._consumers or self._in_hand or self.buffer:
            return False
        tiers = list(self.spec.tiers)
        try:
            ready = await ready_messages(self.connection, [self.settings.queue_name(t) for t in tiers])
            due = await due_soon(self.async_engine, tiers, settle_s)
        except Exception as exc:  # noqa: BLE001 - not known to be empty: look again at the next check
            event(log, "worker.drain_check_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return False
        return not (ready or due or self._in_hand or self.buffer)

    async def _slot(self, only: str | None = None) -> None:
        # A slot is busy until its delivery's handler has returned; the finishing stage records the
        # outcome and acks (workers.finishing) while the slot takes the next delivery.
        while not self._stopping:
            tier, message = await self.buffer.get(only)
            self._in_hand += 1
            self._idle.clear()
            d = self.processor.delivery(tier, message)
            try:
                await self.processor.take(d)
            except Exception as exc:  # noqa: BLE001 - a bug (DeliveryFinishedError): loud, but the slot lives on
                event(log, "worker.slot_failed", logging.ERROR, tier=tier, error=f"{type(exc).__name__}: {exc}")
            finally:
                if d.finishing is None:  # else the finishing stage lets go of it when done
                    self._let_go(d)

    def _let_go(self, d: Delivery) -> None:
        """The pool is done with ``d`` (acked, handed back, or left unacked at a stop)."""
        self.inflight.drop(d.message)
        self._in_hand -= 1
        if not self._in_hand:
            self._idle.set()

    async def shutdown(self, slots: list[asyncio.Task[None]], chores: list[asyncio.Task[None]]) -> None:
        """Stop consuming, let in-flight jobs finish within the grace period, release the rest."""
        self._stopping = self.processor.stopping = True
        for queue, tag in self._consumers:
            await _bounded(queue.cancel(tag), "consumer_cancel")
        if self.sweeper is not None:
            await _bounded(self.sweeper.stop(), "dlq_sweeper")
        idle = [s for s in slots if not s.done()]
        if self._in_hand:  # handlers running, and outcomes being recorded in the finishing stage
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace_s)
        # Handlers still running (not in the finishing stage: their handler returned, their outcome is
        # known and is recorded below, not released as crashed).
        unfinished = [d for d in self._running.values() if d.finishing is None]
        for s in idle:
            s.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        # Outcomes still being recorded: waited for (while stopping, a finish in trouble hands its message
        # back at once instead of backing off), then cancelled past the bound: unacked, their messages go
        # back to their queues when the connection closes below, and their leases decide.
        await _bounded(self.processor.finishing.wait(), "finishing")
        await self.processor.finishing.cancel()
        # A slot cancelled while its start was in a batch statement: the statement may still commit
        # the lease of a job nobody will run. Wait for it, and hand such jobs back like the rest.
        orphans = await self.starts.orphans()
        await self.processor.release(unfinished, orphans)
        self._chores_stop.set()
        await _bounded(asyncio.wait(chores), "chores")  # each finishes the run it is in, if any
        for c in chores:
            c.cancel()  # only one that overran the bound is still running
        self.executor.shutdown()
        await _bounded(self.admission.close(), "admission")
        await _bounded(self.inflight.close(), "inflight")
        await _bounded(self._close_connection(), "amqp")  # unacked (buffered, unstarted) messages go back
        await _bounded(self.async_engine.dispose(), "postgres")
        await _bounded(self.ledger_engine.dispose(), "postgres")
        self.sync_engine.dispose()
        event(log, "worker.stopped", pool=self.name, released=len(unfinished) + len(orphans), **self.counts,
              finished_outside_slots=self.processor.finishing.handed,
              starts=self.starts.group.recorded, start_statements=self.starts.group.flushes,
              sessionless_successes=self.executor.successes.group.recorded,
              success_statements=self.executor.successes.group.flushes)

    async def _heartbeat(self) -> None:
        await self.ledger.heartbeat(list(self._running))
        await self.admission.renew(d.admitted.token for d in self._running.values() if d.admitted)

    async def _refresh_pauses(self) -> None:
        try:
            await self.admission.refresh_pauses()
        except Exception as exc:  # noqa: BLE001 - keep the last known pauses; Postgres trouble is logged
            event(log, "worker.pauses_refresh_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def _check_consumers(self) -> None:
        # The backstop for a consumer lost without a basic.cancel (workers.consumers): a queue of this
        # pool with no consumer at all cannot be consumed by this pool, so reconnect and consume again.
        connection, lost, consumers = self.connection, self._lost, list(self._consumers)
        if (self._stopping or connection is None or connection.is_closed or lost is None or lost.is_set()
                or not consumers):  # a stop cancels the consumers itself
            return
        missing = await unconsumed(connection, [queue.name for queue, _ in consumers])
        if missing and lost is self._lost:  # still the same connection: a reconnect meanwhile made new consumers
            event(log, "worker.consumer_missing", logging.WARNING, queues=",".join(missing))
            lost.set()

    async def _partitions(self) -> None:
        # The job-history day partitions ahead (outbox._partitions): every worker tries, hourly; the
        # advisory lock lets one pass run at a time and the others return at once. Its DDL runs on a
        # connection of its own, in a thread: short transactions, each lock asked with lock_timeout.
        created = await asyncio.to_thread(_ensure_partitions, self.settings.psycopg_url,
                                          self.settings.partition_days_ahead)
        if created:
            event(log, "worker.partitions_created", partitions=",".join(created))

    async def _reap(self) -> None:
        for job_id, decision in await self.ledger.reap():
            self.recorder.count(f"reaped_{decision}")
            event(log, "worker.reaped", logging.WARNING, job_id=job_id, decision=decision)

    def _chore(self, interval_s: float, fn: Any, name: str) -> asyncio.Task[None]:
        # Named, so a stack dump (SIGUSR1) says which chore an await belongs to.
        return asyncio.create_task(self._every(interval_s, fn, name), name=f"chore-{name}")

    async def _every(self, interval_s: float, fn: Any, name: str) -> None:
        # Stops between two runs (shutdown sets _chores_stop), not by cancellation in the middle of
        # one: a statement or a Redis call cancelled halfway runs its library's cleanup, and one such
        # cleanup once kept a stopping pool waiting forever.
        while not self._chores_stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._chores_stop.wait(), interval_s)
            if self._chores_stop.is_set():
                return
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - a chore failing must not kill the pool
                event(log, f"worker.{name}_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")


def _ensure_partitions(url: str, days_ahead: int) -> list[str]:
    import psycopg

    from outbox import _partitions

    with psycopg.connect(url) as conn:
        return _partitions.ensure(conn, days_ahead)


def _spelled(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in counts.items()) or "-"


async def _bounded(step: Any, what: str) -> None:
    """Await one closing step for at most CLOSE_TIMEOUT_S; a failure or a timeout is logged, not raised."""
    try:
        await asyncio.wait_for(step, CLOSE_TIMEOUT_S)
    except TimeoutError:
        event(log, "worker.close_timeout", logging.WARNING, step=what, timeout_s=CLOSE_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - a stop goes on whatever one peer says
        event(log, "worker.close_failed", logging.WARNING, step=what, error=f"{type(exc).__name__}: {exc}")
