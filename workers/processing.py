"""The way of one delivery through a pool: decode, admit, start, run, and one finish.

Every path ends in exactly one :meth:`Delivery.finish <tierbox.workers.delivery.Delivery.finish>`
with its outcome (:mod:`workers.outcomes`). Postgres or broker trouble anywhere on the way is
retried with the back-off :data:`INFRA_BACKOFF_S`, the same delivery (its start token, its
admission) each time; when it outlasts the back-off the message is handed back to its queue.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Awaitable

from aio_pika.abc import AbstractIncomingMessage

from outbox import _tracing as tracing
from outbox._failure import ErrorInfo
from outbox._fingerprint import attach
from outbox._logs import event
from outbox._progress import EngineProgress
from outbox.context import TaskContext
from outbox.registry import Registry
from tierbox.flow.admission import RUN, Admission
from tierbox.workers import counters as metrics
from tierbox.workers.batch import OutcomeNotRecorded, StartBatcher
from tierbox.workers.buffer import PriorityBuffer
from tierbox.workers.delivery import Delivery, DeliveryFinishedError
from tierbox.workers.execute import AttemptTimeout, Executor
from tierbox.workers.ledger import Ledger, StartResult
from tierbox.workers.outcomes import (
    Deferred,
    Duplicate,
    Failed,
    HandedBack,
    NotRecorded,
    Outcome,
    Ran,
    Recorder,
    Released,
    TracingRecorder,
    Undeliverable,
    UnknownTask,
)

log = logging.getLogger("tierbox.worker")

#: Benchmark instrumentation (bench/latency.py sets it): one ``worker.hop`` log line per started job,
#: when the pool's receiver got its message (``received``), when a slot took the delivery (``taken``)
#: and when its start had committed (``started``). Off, one boolean test per delivery.
HOPS = os.environ.get("TIERBOX_BENCH_HOPS") == "1"

#: Back-off after a Postgres failure before the message is handed back to the broker.
INFRA_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Processor:
    """Processes the deliveries of one pool; ``running`` holds those whose handler is running."""

    def __init__(self, pool: str, registry: Registry, ledger: Ledger, admission: Admission, executor: Executor,
                 buffer: PriorityBuffer) -> None:
        self.pool = pool
        self.registry = registry
        self.ledger = ledger
        self.admission = admission
        self.executor = executor
        self.buffer = buffer
        self.starts = StartBatcher(ledger)
        #: Spans are recorded (outbox._tracing): decided once, so tracing off costs one check per job.
        self.traced = tracing.enabled()
        self.recorder = (TracingRecorder if self.traced else Recorder)(ledger, pool)
        self.running: dict[uuid.UUID, Delivery] = {}
        #: id(message) -> when the pool's receiver got it (only while :data:`HOPS`; taken by the delivery).
        self.received: dict[int, float] = {}
        #: Set at shutdown: a delivery in trouble is handed back at once instead of backing off.
        self.stopping = False

    async def process(self, tier: str, message: AbstractIncomingMessage) -> None:
        """Handle one delivery end to end; never raises (failures are recorded or retried), except
        :class:`DeliveryFinishedError`, a bug."""
        if self.traced:
            # The delivery's process span, current while it runs: the handler's spans nest under it.
            with tracing.processing(message.message_id, tier, message.headers or {}, message.exchange,
                                    message.delivery_tag):
                await self._process(tier, message)
            return
        await self._process(tier, message)

    async def _process(self, tier: str, message: AbstractIncomingMessage) -> None:
        delivery = Delivery(tier, message, self.recorder, self.admission)
        if HOPS:
            delivery.received = self.received.pop(id(message), 0.0)
        try:
            for attempt, backoff in enumerate((*INFRA_BACKOFF_S, None)):
                try:
                    await self._handle(delivery)
                    return
                except DeliveryFinishedError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Postgres/broker trouble: back off, then hand back
                    event(log, "worker.infra_error", logging.WARNING, tier=tier, message_id=message.message_id,
                          error=f"{type(exc).__name__}: {exc}", attempt=attempt + 1)
                    if backoff is None or self.stopping:
                        break
                    delivery.next_try()
                    await asyncio.sleep(backoff)
            await delivery.finish(HandedBack())
        finally:
            await delivery.release()  # a no-op once finished; a cancelled delivery (shutdown) frees its hold

    async def _handle(self, d: Delivery) -> None:
        taken = time.time() if HOPS else 0.0
        error = d.decode()
        if error is not None:
            await d.finish(Undeliverable("undecodable", ErrorInfo(type(error).__name__, str(error)[:2000])))
            return
        d.task = self.registry.get(d.env.task)
        if not await self._admitted(d):
            return
        if d.task is not None and d.task.is_async and d.task.takes_context:
            # The handler's transaction needs a pooled connection: start_attempt runs on it first,
            # as its liveness check (no pre-ping), so a dead connection fails the start (retried as
            # infrastructure trouble), never the handler's first statement (a used-up attempt).
            async with self.ledger.engine.connect() as conn:
                d.conn = conn
                try:
                    d.start = await self.ledger.start(d.env.id, acked_early=d.task.long, conn=conn, token=d.token)
                    await self._started(d)
                finally:
                    d.conn = None
            return
        # Batched with the other deliveries starting meanwhile (workers.batch): one commit for all.
        d.start = await self.starts.start(d.env.id, acked_early=bool(d.task and d.task.long), token=d.token)
        if HOPS:
            event(log, "worker.hop", job_id=d.env.id, received=f"{d.received:.6f}", taken=f"{taken:.6f}",
                  started=f"{time.time():.6f}",
                  decision=d.start.decision, busy_starts=self.starts.busy)
        await self._started(d)

    async def _admitted(self, d: Delivery) -> bool:
        """Whether flow control lets it start; if not, the delivery is finished as deferred."""
        if d.admitted is None:
            decision = await self.admission.admit(d.task, d.env.tier, d.payload.kwargs) if d.task else RUN
            if not decision.run:
                await d.finish(Deferred(decision))
                return False
            # Admitted once for the delivery, not once per try: a try after a lost start reply must
            # reach start_attempt with its token, not be deferred by a rate limit it already paid.
            d.admitted = decision
        return True

    async def _started(self, d: Delivery) -> None:
        if d.started.decision == "unknown":
            error = ErrorInfo("LookupError", f"job {d.env.id} is not in the ledger")
            await d.finish(Undeliverable("unknown_job", error))
        elif d.started.decision != "run":
            await d.finish(Duplicate(d.started.decision))
        elif d.task is None:
            await d.finish(UnknownTask())
        else:
            await self._run(d)

    async def _run(self, d: Delivery) -> None:
        """Run one attempt and finish the delivery with its outcome, heartbeat renewing its lease meanwhile."""
        task, env, start = d.handler, d.env, d.started
        d.handler_ran = True
        if task.long:
            await d.ack_early()  # start_attempt has committed: the lease now protects the job
        self.running[env.id] = d
        if start.attempt == 1 and start.enqueued_at is not None:
            metrics.WAIT.labels(env.tier).observe(max(time.time() - start.enqueued_at.timestamp(), 0.0))
        metrics.RUNNING.labels(self.pool).set(len(self.running))
        metrics.BUFFERED.labels(self.pool).set(len(self.buffer))
        began = time.monotonic()
        try:
            await d.finish(await self._attempt(d))
        finally:
            self.running.pop(env.id, None)
            metrics.DURATION.labels(env.tier).observe(time.monotonic() - began)
            metrics.RUNNING.labels(self.pool).set(len(self.running))

    async def _attempt(self, d: Delivery) -> Outcome:
        start = d.started
        ctx = TaskContext(job_id=d.env.id, task=d.handler.name, tier=d.env.tier, attempt=start.attempt,
                          max_retries=start.max_retries, enqueued_at=start.enqueued_at, headers=start.headers,
                          progress_writer=EngineProgress(d.env.id, start.attempt, self.executor.async_engine,
                                                         self.executor.sync_engine))
        try:
            return Ran(await self.executor.run(d.handler, d.payload, ctx, d.conn))
        except AttemptTimeout as exc:
            attach(exc, ctx.fingerprint)
            return Failed(exc, "timeout")
        except OutcomeNotRecorded as exc:
            # Not the handler's failure: leave the job to its lease (no heartbeat once it leaves
            # ``running``); the reaper retries it.
            return NotRecorded(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - the handler's own failure, recorded in the ledger
            attach(exc, ctx.fingerprint)  # the handler's ctx.set_fingerprint(), for ErrorInfo.of
            return Failed(exc, "failed")

    async def release(self, unfinished: list[Delivery], orphans: list[tuple[uuid.UUID, StartResult]]) -> None:
        """Shutdown, grace period over: hand these jobs back to the outbox (or dead-letter spent ones) as ``crashed``.

        ``unfinished``: deliveries still running; ``orphans``: starts committed for deliveries whose slot was
        cancelled meanwhile (their messages return to the queue when the connection closes).
        """
        for delivery in unfinished:
            if not delivery.finished:
                await self._settle_released(delivery.env.id, delivery.finish(Released()))
        for job_id, start in orphans:
            if start.decision == "run":
                await self._settle_released(job_id, self.recorder.release_job(job_id, start))

    async def _settle_released(self, job_id: uuid.UUID, release: Awaitable[None]) -> None:
        try:
            await release
        except Exception as exc:  # noqa: BLE001 - the lease expires and the reaper recovers it
            event(log, "worker.release_failed", logging.WARNING, job_id=job_id, error=exc)
