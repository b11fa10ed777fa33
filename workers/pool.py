"""A worker pool: consumes its tier queues, runs jobs, records every outcome, then acks.

Acknowledgement is late: a message is acked only after its outcome (success,
scheduled retry, dead letter, or "duplicate, not run") is committed in
Postgres. A crash before that leaves it unacked, so RabbitMQ redelivers it.
Tasks declared ``long=True`` are the exception: they are acked as soon as
their lease is committed, so the broker's consumer timeout cannot cancel an
hours-long job; from then on the lease and the reaper protect them.

Ordering between the pool's queues is decided by :mod:`workers.buffer`.
Leases are renewed by a heartbeat every ``lease_s / 3``; any worker's reaper
recovers leases that expire (worker killed, Postgres connection lost).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from typing import Any

import aio_pika
import msgspec
from aio_pika.abc import AbstractIncomingMessage
from sqlalchemy import create_engine
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from outbox import _encoding as encoding
from outbox._failure import ErrorInfo
from outbox._logs import event
from outbox._runtime import wait_any
from outbox.config import Settings
from outbox.context import TaskContext
from outbox.errors import TopologyMismatchError
from outbox.registry import Registry, Task
from outbox.tiers import PoolSpec
from tierbox.flow.admission import PAUSE_REFRESH_S, RUN, Admission
from tierbox.flow.gate import Decision, Hold
from tierbox.workers import counters as metrics
from tierbox.workers.batch import OutcomeNotRecorded, StartBatcher
from tierbox.workers.buffer import PriorityBuffer
from tierbox.workers.dlq_sweeper import DlqSweeper, safe_headers
from tierbox.workers.execute import AttemptTimeout, Executor, Result
from tierbox.workers.ledger import Ledger, StartResult

log = logging.getLogger("tierbox.worker")

#: Broker reconnect back-off: first wait and cap, seconds.
RECONNECT_FIRST_S = 0.5
RECONNECT_MAX_S = 30.0
#: Back-off after a Postgres failure before the message is handed back to the broker.
INFRA_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Delivery:
    """One delivery across the pool's tries of it (the infrastructure back-off in ``Pool.process``).

    ``token`` is sent with every start: a try whose start committed but whose reply was lost is
    resumed by the next try instead of being taken for a duplicate (migration 0006). Once the
    handler has run, the token is spent (:meth:`next_try` draws a new one): a later try, whose
    outcome could not be recorded, must not run the handler again under the same attempt; it
    meets the lease like any other copy. ``admitted``: the flow-control decision, taken once for
    the delivery, with its concurrency hold, released when the delivery is done.
    """

    __slots__ = ("admitted", "handler_ran", "task", "token")

    def __init__(self) -> None:
        self.token = uuid.uuid4()
        self.handler_ran = False
        self.task: Task | None = None
        self.admitted: Decision | None = None

    def next_try(self) -> None:
        """Before another try: keep the token unless the handler has already run with it."""
        if self.handler_ran:
            self.token, self.handler_ran = uuid.uuid4(), False


def new_worker_id() -> str:
    """Unique per process start: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def retry_delay_s(task: Task, attempt: int) -> float:
    """Exponential back-off with full jitter: uniform(0, min(cap, base * 2**(attempt-1)))."""
    ceiling = min(task.retry_backoff_max_s, task.retry_backoff_s * (2 ** max(attempt - 1, 0)))
    return random.uniform(0, ceiling)


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
        # the handler's transaction and its outcome share it), the batched starts and sessionless
        # successes (workers.batch), heartbeat, reaper, DLQ sweeper and sync-handler outcomes. No
        # pre-ping: a delivery's first statement (its start, alone or batched) is the liveness
        # check; a dead pooled connection fails it before any handler runs, SQLAlchemy then recycles
        # the whole pool, and Pool.process retries the delivery after a back-off.
        self.async_engine = create_async_engine(settings.sqlalchemy_url, pool_size=spec.slots + 3,
                                                max_overflow=spec.slots, pool_pre_ping=False)
        # Sync engine: only sync handlers' transactions, in threads. It keeps pre-ping: a sync
        # handler's first statement is the handler's own, and a dead connection there would be
        # recorded as a failed attempt rather than retried as infrastructure trouble.
        self.sync_engine = create_engine(settings.sqlalchemy_url, pool_size=spec.slots,
                                         max_overflow=0, pool_pre_ping=True)
        self.ledger = Ledger(self.async_engine, self.worker_id, settings.lease_s)
        self.starts = StartBatcher(self.ledger)
        self.executor = Executor(self.async_engine, self.sync_engine, spec.slots)
        self.admission = Admission(settings, self.async_engine, registry.breakers)
        self._holds: dict[uuid.UUID, Hold | None] = {}
        self.connection: aio_pika.abc.AbstractConnection | None = None
        self.sweeper: DlqSweeper | None = None
        self._consumers: list[tuple[aio_pika.abc.AbstractQueue, str]] = []
        self._running: dict[uuid.UUID, tuple[StartResult, AbstractIncomingMessage | None]] = {}
        self._busy = 0
        self._idle = asyncio.Event()
        self._stopping = False
        self.counts: dict[str, int] = {}

    async def start(self) -> asyncio.Event:
        """Connect, declare the pool's queues and start consuming; the event is set if the connection drops."""
        from outbox._amqp import declare_topology
        from outbox._maintenance import check_schema_async

        async with self.async_engine.connect() as conn:  # rolled out before `tierbox migrate`: say so, retry
            await check_schema_async(conn)
        name = f"tierbox-worker {self.settings.queue_prefix}{self.name} {self.worker_id}"
        lost = asyncio.Event()
        self.connection = await aio_pika.connect(self.settings.amqp_url, client_properties={"connection_name": name})
        self.connection.close_callbacks.add(lambda *_: lost.set())
        self._consumers = []
        await declare_topology(self.connection, self.settings, list(self.spec.tiers))
        for tier in self.spec.tiers:
            channel = await self.connection.channel()
            channel.close_callbacks.add(lambda *_: lost.set())
            await channel.set_qos(prefetch_count=self._qos(tier))
            queue = await channel.get_queue(self.settings.queue_name(tier), ensure=False)
            tag = await queue.consume(self._receiver(tier))
            self._consumers.append((queue, tag))
        self.sweeper = DlqSweeper(self.settings, self.connection, self.ledger, list(self.spec.tiers))
        await self.sweeper.start()
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
                dropped = len(self.buffer.drain())
                event(log, "worker.disconnected", logging.WARNING, buffered_dropped=dropped)
                await self._close_connection()

    async def _close_connection(self) -> None:
        if self.connection is not None and not self.connection.is_closed:
            with contextlib.suppress(Exception):
                await self.connection.close()

    def _receiver(self, tier: str) -> Any:
        async def receive(message: AbstractIncomingMessage) -> None:
            await self.buffer.put(tier, message.priority or 0, message)
        return receive

    async def run(self, stop: asyncio.Event) -> None:
        """Work until ``stop`` is set (reconnecting as needed), then shut down gracefully."""
        await self._refresh_pauses()
        slots = [asyncio.create_task(self._slot(), name=f"slot-{i}") for i in range(self.spec.concurrency)]
        slots += [asyncio.create_task(self._slot(only=tier), name=f"slot-{tier}-{i}")
                  for tier, count in self.spec.reserved.items() for i in range(count)]
        chores = [asyncio.create_task(self._every(self.settings.lease_s / 3, self._heartbeat, "heartbeat")),
                  asyncio.create_task(self._every(self.settings.reaper_interval_s, self._reap, "reap")),
                  asyncio.create_task(self._every(PAUSE_REFRESH_S, self._refresh_pauses, "pauses"))]
        try:
            await self._connected(stop)
        finally:
            await self.shutdown(slots, chores)

    async def _slot(self, only: str | None = None) -> None:
        while not self._stopping:
            tier, message = await self.buffer.get(only)
            self._busy += 1
            self._idle.clear()
            try:
                await self.process(tier, message)
            finally:
                self._busy -= 1
                if not self._busy:
                    self._idle.set()

    async def shutdown(self, slots: list[asyncio.Task[None]], chores: list[asyncio.Task[None]]) -> None:
        """Stop consuming, let in-flight jobs finish within the grace period, release the rest."""
        self._stopping = True
        for queue, tag in self._consumers:
            with contextlib.suppress(Exception):
                await queue.cancel(tag)
        if self.sweeper is not None:
            await self.sweeper.stop()
        idle = [s for s in slots if not s.done()]
        if self._busy:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace_s)
        unfinished = dict(self._running)
        for s in idle:
            s.cancel()
        await asyncio.gather(*idle, return_exceptions=True)
        # A slot cancelled while its start was in a batch statement: the statement may still commit
        # the lease of a job nobody will run. Wait for it, and hand such jobs back like the rest.
        for job_id, start in await self.starts.orphans():
            if start.decision == "run":
                unfinished[job_id] = (start, None)
        await self._release(unfinished)
        for c in chores:
            c.cancel()
        await asyncio.gather(*chores, return_exceptions=True)
        self.executor.shutdown()
        await self.admission.close()
        await self._close_connection()  # unacked (buffered, unstarted) messages go back to their queues
        await self.async_engine.dispose()
        self.sync_engine.dispose()
        event(log, "worker.stopped", pool=self.name, released=len(unfinished), **self.counts,
              starts=self.starts.group.recorded, start_statements=self.starts.group.flushes,
              sessionless_successes=self.executor.successes.group.recorded,
              success_statements=self.executor.successes.group.flushes)

    async def _release(self, unfinished: dict[uuid.UUID, tuple[StartResult, AbstractIncomingMessage | None]]) -> None:
        """Hand jobs still running after the grace period back to the outbox (or dead-letter a spent one)."""
        error = ErrorInfo("WorkerShutdown", "worker stopped before the job finished (grace period over)")
        for job_id, (start, message) in unfinished.items():
            attempt = start.attempt
            try:
                if attempt < start.max_retries + 1:
                    await self.ledger.retry(job_id, attempt, 0.0, "crashed", error)
                else:
                    await self.ledger.dead(job_id, attempt, "crashed", "crashed", error)
                if message is not None:
                    await message.ack()
                event(log, "worker.released", job_id=job_id, attempt=attempt)
            except Exception as exc:  # noqa: BLE001 - the lease expires and the reaper recovers it
                event(log, "worker.release_failed", logging.WARNING, job_id=job_id, error=exc)

    async def process(self, tier: str, message: AbstractIncomingMessage) -> None:
        """Handle one delivery end to end; never raises (failures are recorded or retried)."""
        delivery = Delivery()
        try:
            for attempt, backoff in enumerate((*INFRA_BACKOFF_S, None)):
                try:
                    await self._handle(tier, message, delivery)
                    return
                except Exception as exc:  # noqa: BLE001 - Postgres/broker trouble: back off, then hand back
                    event(log, "worker.infra_error", logging.WARNING, tier=tier, message_id=message.message_id,
                          error=f"{type(exc).__name__}: {exc}", attempt=attempt + 1)
                    if backoff is None or self._stopping:
                        break
                    delivery.next_try()
                    await asyncio.sleep(backoff)
            with contextlib.suppress(Exception):
                await message.nack(requeue=True)
        finally:
            if delivery.task is not None and delivery.admitted is not None:
                await self.admission.finished(delivery.task, delivery.admitted, None)  # frees its concurrency hold

    async def _handle(self, tier: str, message: AbstractIncomingMessage, delivery: Delivery) -> None:
        try:
            env = encoding.decode_envelope(message.body)
            payload = encoding.decode_payload(env.payload)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._dead_message(tier, message, "undecodable", exc)
            return
        await self._deliver(tier, message, env, payload, self.registry.get(env.task), delivery)

    async def _deliver(self, tier: str, message: AbstractIncomingMessage, env: encoding.Envelope,
                       payload: encoding.Payload, task: Task | None, delivery: Delivery) -> None:
        decision = delivery.admitted
        if decision is None:
            decision = await self.admission.admit(task, env.tier, payload.kwargs) if task is not None else RUN
            if not decision.run:
                await self._defer(env, decision, message)
                return
            # Admitted once for the delivery, not once per try: a try after a lost start reply must
            # reach start_attempt with its token, not be deferred by a rate limit it already paid.
            delivery.task, delivery.admitted = task, decision
        await self._deliver_admitted(tier, message, env, payload, task, decision, delivery)

    async def _defer(self, env: encoding.Envelope, decision: Decision, message: AbstractIncomingMessage) -> None:
        deferred = await self.ledger.defer(env.id, decision.delay_s)
        self._count(f"deferred_{decision.reason}" if deferred else "skipped_defer")
        event(log, "worker.deferred", logging.DEBUG, job_id=env.id, reason=decision.reason,
              delay_s=round(decision.delay_s, 3), deferred=deferred)
        await _ack(message)

    async def _deliver_admitted(self, tier: str, message: AbstractIncomingMessage, env: encoding.Envelope,
                                payload: encoding.Payload, task: Task | None, decision: Decision,
                                delivery: Delivery) -> None:
        acked_early = bool(task and task.long)
        if task is not None and task.is_async and task.takes_context:
            # The handler's transaction needs a pooled connection: start_attempt runs on it first,
            # as its liveness check (no pre-ping), so a dead connection fails the start (retried as
            # infrastructure trouble), never the handler's first statement (a used-up attempt).
            async with self.async_engine.connect() as conn:
                start = await self.ledger.start(env.id, acked_early=acked_early, conn=conn, token=delivery.token)
                await self._started(tier, message, env, payload, task, decision, start, conn, delivery)
            return
        # Batched with the other deliveries starting meanwhile (workers.batch): one commit for all.
        start = await self.starts.start(env.id, acked_early=acked_early, token=delivery.token)
        await self._started(tier, message, env, payload, task, decision, start, None, delivery)

    async def _started(self, tier: str, message: AbstractIncomingMessage, env: encoding.Envelope,
                       payload: encoding.Payload, task: Task | None, decision: Decision, start: StartResult,
                       conn: AsyncConnection | None, delivery: Delivery) -> None:
        if start.decision == "unknown":
            await self._dead_message(tier, message, "unknown_job", LookupError(f"job {env.id} is not in the ledger"),
                                     env=env)
            return
        if start.decision != "run":
            self._count(f"skipped_{start.decision}")
            event(log, "worker.duplicate_absorbed", logging.DEBUG, job_id=env.id, decision=start.decision)
            await _ack(message)
            return
        if task is None:
            error = ErrorInfo("UnknownTask", f"no handler registered as {env.task!r} in pool {self.name}")
            await self.ledger.dead(env.id, start.attempt, "unknown_task", "failed", error)
            self._count("dead")
            event(log, "worker.dead_lettered", logging.WARNING, job_id=env.id, reason="unknown_task", task=env.task)
            await _ack(message)
            return
        self._holds[env.id] = decision.token
        delivery.handler_ran = True
        try:
            ok = await self._run(task, env, payload, start, message, conn)
        finally:
            self._holds.pop(env.id, None)
        await self.admission.finished(task, Decision(run=True), ok)

    async def _run(self, task: Task, env: encoding.Envelope, payload: encoding.Payload, start: StartResult,
                   message: AbstractIncomingMessage, conn: AsyncConnection | None) -> bool | None:
        """Run one attempt and record it; returns how the downstream fared (for breakers)."""
        ok: bool | None = None
        if task.long:
            await _ack(message)  # start_attempt has committed: the lease now protects the job
        self._running[env.id] = (start, None if task.long else message)
        if start.attempt == 1 and start.enqueued_at is not None:
            metrics.WAIT.labels(env.tier).observe(max(time.time() - start.enqueued_at.timestamp(), 0.0))
        metrics.RUNNING.labels(self.name).set(len(self._running))
        metrics.BUFFERED.labels(self.name).set(len(self.buffer))
        began = time.monotonic()
        ctx = TaskContext(job_id=env.id, task=task.name, tier=env.tier, attempt=start.attempt,
                          max_retries=start.max_retries, enqueued_at=start.enqueued_at, headers=start.headers)
        try:
            result = await self.executor.run(task, payload, ctx, conn)
        except AttemptTimeout as exc:
            ok = False
            await self._failed(task, env, start, exc, "timeout")
        except OutcomeNotRecorded as exc:
            # The handler succeeded but Postgres would not record it: not the handler's failure.
            # Leave the job to its lease (no heartbeat once it leaves _running); the reaper retries it.
            self._count("outcome_not_recorded")
            event(log, "worker.outcome_not_recorded", logging.WARNING, job_id=env.id, attempt=start.attempt,
                  error=str(exc)[:200])
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's own failure, recorded in the ledger
            ok = not task.retryable(exc)  # a refusal (Reject) means the downstream answered
            await self._failed(task, env, start, exc, "failed")
        else:
            ok = result is Result.SUCCEEDED
            self._count(result.value)
            if result is not Result.SUCCEEDED:
                event(log, "worker.fenced", logging.WARNING, job_id=env.id, attempt=start.attempt, result=result.value)
        finally:
            self._running.pop(env.id, None)
            metrics.DURATION.labels(env.tier).observe(time.monotonic() - began)
            metrics.RUNNING.labels(self.name).set(len(self._running))
        if not task.long:
            await _ack(message)
        return ok

    async def _failed(self, task: Task, env: encoding.Envelope, start: StartResult, exc: BaseException,
                      outcome: str) -> None:
        error = ErrorInfo.of(exc)
        retryable = task.retryable(exc) if outcome == "failed" else True
        if retryable and start.attempt < start.max_retries + 1:
            delay = retry_delay_s(task, start.attempt)
            await self.ledger.retry(env.id, start.attempt, delay, outcome, error)
            self._count("retried")
            event(log, "worker.retry_scheduled", job_id=env.id, attempt=start.attempt, delay_s=round(delay, 3),
                  error_type=error.type, error=error.message[:200])
            return
        reason = "non_retryable" if not retryable else ("timeout" if outcome == "timeout" else "failed")
        await self.ledger.dead(env.id, start.attempt, reason, outcome, error)
        self._count("dead")
        event(log, "worker.dead_lettered", logging.WARNING, job_id=env.id, reason=reason, error_type=error.type,
              error=error.message[:200])

    async def _dead_message(self, tier: str, message: AbstractIncomingMessage, reason: str, exc: BaseException,
                            env: encoding.Envelope | None = None) -> None:
        await self.ledger.dead_message(
            tier=tier, reason=reason, error=ErrorInfo(type(exc).__name__, str(exc)[:2000]), raw_body=message.body,
            headers=safe_headers(message), job_id=env.id if env else None, task=env.task if env else None,
            payload=bytes(env.payload) if env else None, priority=message.priority,
        )
        self._count("dead")
        event(log, "worker.dead_lettered", logging.WARNING, reason=reason, tier=tier, message_id=message.message_id,
              body_bytes=len(message.body))
        await _ack(message)

    async def _heartbeat(self) -> None:
        await self.ledger.heartbeat(list(self._running))
        await self.admission.renew(self._holds.values())

    async def _refresh_pauses(self) -> None:
        try:
            await self.admission.refresh_pauses()
        except Exception as exc:  # noqa: BLE001 - keep the last known pauses; Postgres trouble is logged
            event(log, "worker.pauses_refresh_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    async def _reap(self) -> None:
        for job_id, decision in await self.ledger.reap():
            self._count(f"reaped_{decision}")
            event(log, "worker.reaped", logging.WARNING, job_id=job_id, decision=decision)

    async def _every(self, interval_s: float, fn: Any, name: str) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await fn()
            except Exception as exc:  # noqa: BLE001 - a chore failing must not kill the pool
                event(log, f"worker.{name}_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")

    def _count(self, key: str) -> None:
        self.counts[key] = self.counts.get(key, 0) + 1
        metrics.EVENTS.labels(self.name, key).inc()


def _spelled(counts: dict[str, int]) -> str:
    return ",".join(f"{k}:{v}" for k, v in counts.items()) or "-"


async def _ack(message: AbstractIncomingMessage) -> None:
    try:
        await message.ack()
    except Exception as exc:  # noqa: BLE001 - channel gone: the outcome is committed; a redelivery is absorbed
        event(log, "worker.ack_failed", logging.WARNING, message_id=message.message_id, error=exc)

