"""The way of one delivery through a pool: decode, admit, start, run, and one finish.

Every path ends in exactly one :meth:`Delivery.finish <tierbox.workers.delivery.Delivery.finish>`
with its outcome (:mod:`workers.outcomes`). Postgres or broker trouble anywhere on the way is
retried with the back-off :data:`INFRA_BACKOFF_S`, the same delivery (its start token, its
admission) each time; when it outlasts the back-off the message is handed back to its queue.

A slot holds a delivery until its handler returns (:meth:`Processor.take`); the finish of a
handler that returned runs in the finishing stage (:mod:`workers.finishing`), outside the slot,
except where :meth:`Processor._run` says why not.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from typing import Any

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
from tierbox.workers.execute import AttemptTimeout, Executor, Returned
from tierbox.workers.finishing import Finishing
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
#: when the pool's receiver got its message (``received``; ``held``: the tier's messages the pool held
#: unacked then, of ``qos``), when a slot took the delivery (``taken``) and when its start had
#: committed (``started``). Off, one boolean test per delivery.
HOPS = os.environ.get("TIERBOX_BENCH_HOPS") == "1"

#: Back-off after a Postgres failure before the message is handed back to the broker.
INFRA_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)


class Processor:
    """Processes the deliveries of one pool; ``running`` holds those whose handler is running or whose
    outcome is being recorded (in a slot or in the finishing stage): their leases are renewed."""

    def __init__(self, pool: str, registry: Registry, ledger: Ledger, admission: Admission, executor: Executor,
                 buffer: PriorityBuffer, finishing_bound: int) -> None:
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
        #: Deliveries whose handler returned, finished outside their slots (:mod:`workers.finishing`).
        self.finishing = Finishing(finishing_bound)
        #: id(message) -> when the pool's receiver got it, the tier's messages the pool held unacked then,
        #: and the tier's QoS (only while :data:`HOPS`; taken by the delivery).
        self.received: dict[int, tuple[float, int, int]] = {}
        #: Set at shutdown: a delivery in trouble is handed back at once instead of backing off.
        self.stopping = False

    def delivery(self, tier: str, message: AbstractIncomingMessage) -> Delivery:
        """A new delivery of ``message``, for :meth:`take`."""
        d = Delivery(tier, message, self.recorder, self.admission)
        if HOPS:
            d.received = self.received.pop(id(message), (0.0, 0, 0))
        return d

    async def process(self, tier: str, message: AbstractIncomingMessage) -> None:
        """Handle one delivery end to end, its finishing included; never raises (failures are recorded
        or retried), except :class:`DeliveryFinishedError`, a bug."""
        d = self.delivery(tier, message)
        await self.take(d)
        if d.finishing is not None:
            await d.finishing

    async def take(self, d: Delivery) -> None:
        """Handle a delivery as far as a slot must: when this returns, either the delivery is finished,
        or its handler has returned and ``d.finishing`` is the task of the finishing stage
        (:mod:`workers.finishing`) that records its outcome and acks it. Never raises but
        :class:`DeliveryFinishedError` (a bug) and a cancellation (shutdown)."""
        if not self.traced:
            await self._process(d)
            return
        # The delivery's process span, current while it runs: the handler's spans nest under it. It
        # ends with the delivery, in the finishing stage if the delivery went there (the task runs in
        # a copy of this context: the outcome is noted on this span).
        message, spans = d.message, []
        try:
            with tracing.processing(message.message_id, d.tier, message.headers or {}, message.exchange,
                                    message.delivery_tag, end_on_exit=False) as span:
                spans.append(span)
                await self._process(d)
        finally:  # after the block: an exception leaving it is recorded on the span before it ends
            for span in spans:
                if d.finishing is None:
                    span.end()
                else:
                    d.finishing.add_done_callback(functools.partial(_end_span, span))

    async def _process(self, d: Delivery) -> None:
        try:
            await self._tries(d, INFRA_BACKOFF_S)
        finally:
            if d.finishing is None:  # the finishing stage releases its own
                await d.release()  # a no-op once finished; a cancelled delivery (shutdown) frees its hold

    async def _tries(self, d: Delivery, backoffs: tuple[float, ...], first: int = 1) -> None:
        """Handle ``d`` until it is finished or handed to the finishing stage, backing off ``backoffs``
        between tries on Postgres or broker trouble; past them (or while stopping) it is handed back."""
        finishing = d.finishing
        for attempt, backoff in enumerate((*backoffs, None), start=first):
            try:
                await self._handle(d)
                return
            except DeliveryFinishedError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres/broker trouble: back off, then hand back
                event(log, "worker.infra_error", logging.WARNING, tier=d.tier, message_id=d.message.message_id,
                      error=f"{type(exc).__name__}: {exc}", attempt=attempt)
                if d.finishing is not finishing:  # trouble after the hand-off (giving back its connection):
                    return  # the delivery is the finishing stage's now, which finishes it
                if backoff is None or self.stopping:
                    break
                d.next_try()
                await asyncio.sleep(backoff)
        await d.finish(HandedBack())

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
            async with self.executor.async_engine.connect() as conn:  # the handlers' engine, not the ledger's
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
            received, held, qos = d.received
            event(log, "worker.hop", job_id=d.env.id, received=f"{received:.6f}", taken=f"{taken:.6f}",
                  started=f"{time.time():.6f}", held=held, qos=qos,
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
        """Run one attempt; hand the delivery to the finishing stage once the handler has returned, or
        finish it here; heartbeat renews its lease meanwhile (while it is in ``running``)."""
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
        handed = False
        try:
            try:
                outcome = await self._attempt(d)
            finally:
                metrics.DURATION.labels(env.tier).observe(time.monotonic() - began)
            # What a slot holds after the handler returned, path by path:
            # * a success of a handler with a transaction (sync, or async taking ctx) committed in that
            #   transaction, inside _attempt: it cannot move, only the ack and the admission's release do;
            # * a sessionless success (Returned), a retry, a dead letter: their commit moves out;
            # * a long task, acked early, stays: its slot is held for minutes, one commit more is
            #   nothing beside that, and as it holds no unacked message the broker's QoS would not
            #   bound how many of them wait in the stage;
            # * a delivery tried again from inside the stage (its finish failed) stays in that task;
            # * a full stage (Finishing.full: after reconnects) lets the slot finish its own, as before.
            if not task.long and d.finishing is None and not self.finishing.full:
                d.finishing = self.finishing.start(d, self._finish(d, outcome))
                handed = True
                return
            await d.finish(await self._recorded(d, outcome))
        finally:
            if not handed:
                self._not_running(env.id)

    def _not_running(self, job_id: uuid.UUID) -> None:
        """The job's finish is done or given up: no more heartbeats for its lease."""
        self.running.pop(job_id, None)
        metrics.RUNNING.labels(self.pool).set(len(self.running))

    async def _finish(self, d: Delivery, outcome: Outcome | Returned) -> None:
        """The finishing stage's task for ``d``: record ``outcome``, release, ack (:meth:`Delivery.finish`).

        If the record fails (Postgres trouble), the delivery goes on as a failed finish always did in
        its slot: its token is spent (the handler ran), so its next try meets the job's own lease as a
        duplicate and is acked, and the lease, no longer renewed, lets the reaper decide.
        """
        try:
            try:
                await d.finish(await self._recorded(d, outcome))
                return
            except DeliveryFinishedError:
                raise
            except Exception as exc:  # noqa: BLE001 - Postgres trouble: tried again below
                event(log, "worker.infra_error", logging.WARNING, tier=d.tier, message_id=d.message.message_id,
                      error=f"{type(exc).__name__}: {exc}", attempt=1, stage="finishing")
            self._not_running(d.env.id)
            if not INFRA_BACKOFF_S or self.stopping:
                await d.finish(HandedBack())
                return
            d.next_try()
            await asyncio.sleep(INFRA_BACKOFF_S[0])
            await self._tries(d, INFRA_BACKOFF_S[1:], first=2)
        except DeliveryFinishedError as exc:  # a bug: loud, but nothing else waits for this task
            event(log, "worker.finish_failed", logging.ERROR, tier=d.tier, error=f"{type(exc).__name__}: {exc}")
        finally:
            self._not_running(d.env.id)
            await d.release()  # a no-op once finished; a cancelled finishing (shutdown) frees its hold

    async def _recorded(self, d: Delivery, outcome: Outcome | Returned) -> Outcome:
        """``outcome`` with a sessionless success recorded (batched): Ran, or NotRecorded, never raises
        but a cancellation. Done once per attempt: a second SUCCEED would be fenced, not a success."""
        if not isinstance(outcome, Returned):
            return outcome
        try:
            return Ran(await self.executor.succeed(d.handler, d.env.id, d.started.attempt, outcome.value))
        except OutcomeNotRecorded as exc:
            # Not the handler's failure: leave the job to its lease (no heartbeat once it leaves
            # ``running``); the reaper retries it.
            return NotRecorded(exc)
        except Exception as exc:  # noqa: BLE001 - the result for its webhook could not be stored: as it
            return Failed(exc, "failed")  # always was when this ran inside the attempt, a failed attempt

    async def _attempt(self, d: Delivery) -> Outcome | Returned:
        start = d.started
        ctx = TaskContext(job_id=d.env.id, task=d.handler.name, tier=d.env.tier, attempt=start.attempt,
                          max_retries=start.max_retries, enqueued_at=start.enqueued_at, headers=start.headers,
                          progress_writer=EngineProgress(d.env.id, start.attempt, self.executor.async_engine,
                                                         self.executor.sync_engine))
        try:
            done = await self.executor.attempt(d.handler, d.payload, ctx, d.conn)
            return done if isinstance(done, Returned) else Ran(done)
        except AttemptTimeout as exc:
            attach(exc, ctx.fingerprint)
            return Failed(exc, "timeout")
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


def _end_span(span: Any, _task: asyncio.Task[None]) -> None:
    span.end()
