"""What can become of a delivery, and how each outcome is recorded: ledger statement, counter, log line.

:meth:`Delivery.finish <tierbox.workers.delivery.Delivery.finish>` takes one of these and hands
it to the pool's :class:`Recorder`, which writes what the outcome needs in Postgres (committed
when it returns) and says how the downstream fared, for the task's breaker. A success needs no
statement here: it committed with the handler's transaction (``workers.execute``).
"""

from __future__ import annotations

import logging
import random
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from outbox import _tracing as tracing
from outbox._attempts import attempts_left
from outbox._failure import ErrorInfo
from outbox._logs import event
from outbox.registry import Task
from tierbox.flow.gate import Decision
from tierbox.workers import counters as metrics
from tierbox.workers.dlq_sweeper import safe_headers
from tierbox.workers.execute import Result
from tierbox.workers.ledger import Ledger, StartResult

if TYPE_CHECKING:
    from tierbox.workers.delivery import Delivery

log = logging.getLogger("tierbox.worker")


@dataclass(frozen=True, slots=True)
class Undeliverable:
    """A message naming no job we can run (``undecodable``, ``unknown_job``): kept as a dead letter."""

    reason: str
    error: ErrorInfo


@dataclass(frozen=True, slots=True)
class Deferred:
    """Flow control refused to start it now: back through the outbox, no attempt used."""

    decision: Decision


@dataclass(frozen=True, slots=True)
class Duplicate:
    """``start_attempt`` said another copy has it (``finished``, ``running``, ``not_due``, ``expired``)."""

    decision: str


@dataclass(frozen=True, slots=True)
class UnknownTask:
    """Started, but no handler is registered for its task in this pool: dead-lettered."""


@dataclass(frozen=True, slots=True)
class Ran:
    """The handler returned; its success (or the fence that refused it) is already committed."""

    result: Result


@dataclass(frozen=True, slots=True)
class Failed:
    """The handler raised (``failed``) or ran out of time (``timeout``): retried or dead-lettered."""

    error: BaseException
    outcome: str


@dataclass(frozen=True, slots=True)
class NotRecorded:
    """The handler succeeded but Postgres would not take it: the job is left to its lease."""

    error: BaseException


@dataclass(frozen=True, slots=True)
class HandedBack:
    """Postgres or broker trouble outlasted the back-off: the message goes back to its queue."""


@dataclass(frozen=True, slots=True)
class Released:
    """Still running when the shutdown grace period ran out: back to the outbox as ``crashed``."""


Outcome: TypeAlias = (Undeliverable | Deferred | Duplicate | UnknownTask | Ran | Failed | NotRecorded | HandedBack
                      | Released)


#: A handler's exception may carry, in this attribute, the earliest retry that can help (seconds): the
#: webhook delivery sets it from a receiver's ``Retry-After`` and from an open breaker's remaining time.
RETRY_AFTER_ATTR = "__tierbox_retry_after__"


def retry_delay_s(task: Task, attempt: int, exc: BaseException | None = None) -> float:
    """Exponential back-off with full jitter: uniform(0, min(cap, base * 2**(attempt-1))); no less than
    the exception's retry-after hint, which is itself capped at the task's ``retry_backoff_max_s``."""
    ceiling = min(task.retry_backoff_max_s, task.retry_backoff_s * (2 ** max(attempt - 1, 0)))
    delay = random.uniform(0, ceiling)
    hint = getattr(exc, RETRY_AFTER_ATTR, None)
    if isinstance(hint, (int, float)) and not isinstance(hint, bool) and hint > 0:
        delay = max(delay, min(float(hint), task.retry_backoff_max_s))
    return delay


class Recorder:
    """Records the outcomes of one pool's deliveries and counts them (``counts``, and Prometheus)."""

    def __init__(self, ledger: Ledger, pool: str) -> None:
        self.ledger = ledger
        self.pool = pool
        #: Deliveries by what happened to them, as the ``worker.stopped`` line prints them.
        self.counts: dict[str, int] = {}

    def count(self, key: str) -> None:
        """Count one event of kind ``key``."""
        self.counts[key] = self.counts.get(key, 0) + 1
        metrics.EVENTS.labels(self.pool, key).inc()

    async def record(self, d: Delivery, outcome: Outcome) -> bool | None:
        """Write what ``outcome`` needs; returns how the downstream fared (for breakers), None if unknown."""
        match outcome:
            case Undeliverable():
                await self._undeliverable(d, outcome)
            case Deferred(decision):
                await self._deferred(d, decision)
            case Duplicate(decision):
                self.count(f"skipped_{decision}")
                event(log, "worker.duplicate_absorbed", logging.DEBUG, job_id=d.env.id, decision=decision)
            case UnknownTask():
                await self._unknown_task(d)
            case Ran(result):
                return self._ran(d, result)
            case Failed(error, kind):
                return await self._failed(d, error, kind)
            case NotRecorded(error):
                self.count("outcome_not_recorded")
                event(log, "worker.outcome_not_recorded", logging.WARNING, job_id=d.env.id, attempt=d.started.attempt,
                      error=str(error)[:200])
            case Released():
                await self.release_job(d.env.id, d.started)
            case HandedBack():
                pass  # nothing to record: the broker delivers the message again
        return None

    async def _undeliverable(self, d: Delivery, outcome: Undeliverable) -> None:
        env, message = d.envelope, d.message
        await self.ledger.dead_message(
            tier=d.tier, reason=outcome.reason, error=outcome.error, raw_body=message.body,
            headers=safe_headers(message), job_id=env.id if env else None, task=env.task if env else None,
            payload=bytes(env.payload) if env else None, priority=message.priority)
        self.count("dead")
        event(log, "worker.dead_lettered", logging.WARNING, reason=outcome.reason, tier=d.tier,
              message_id=message.message_id, body_bytes=len(message.body))

    async def _deferred(self, d: Delivery, decision: Decision) -> None:
        deferred = await self.ledger.defer(d.env.id, decision.delay_s)
        self.count(f"deferred_{decision.reason}" if deferred else "skipped_defer")
        event(log, "worker.deferred", logging.DEBUG, job_id=d.env.id, reason=decision.reason,
              delay_s=round(decision.delay_s, 3), deferred=deferred)

    async def _unknown_task(self, d: Delivery) -> None:
        error = ErrorInfo("UnknownTask", f"no handler registered as {d.env.task!r} in pool {self.pool}")
        await self.ledger.dead(d.env.id, d.started.attempt, "unknown_task", "failed", error)
        self.count("dead")
        event(log, "worker.dead_lettered", logging.WARNING, job_id=d.env.id, reason="unknown_task", task=d.env.task)

    def _ran(self, d: Delivery, result: Result) -> bool:
        self.count(result.value)
        if result is not Result.SUCCEEDED:
            event(log, "worker.fenced", logging.WARNING, job_id=d.env.id, attempt=d.started.attempt,
                  result=result.value)
        return result is Result.SUCCEEDED

    async def _failed(self, d: Delivery, exc: BaseException, outcome: str) -> bool:
        task, start, job_id = d.handler, d.started, d.env.id
        error = ErrorInfo.of(exc)
        retryable = task.retryable(exc) if outcome == "failed" else True
        if retryable and attempts_left(start.attempt, start.max_retries) > 0:
            delay = retry_delay_s(task, start.attempt, exc)
            await self.ledger.retry(job_id, start.attempt, delay, outcome, error)
            self.count("retried")
            event(log, "worker.retry_scheduled", job_id=job_id, attempt=start.attempt, delay_s=round(delay, 3),
                  error_type=error.type, error=error.message[:200])
        else:
            reason = "non_retryable" if not retryable else ("timeout" if outcome == "timeout" else "failed")
            await self.ledger.dead(job_id, start.attempt, reason, outcome, error)
            self.count("dead")
            event(log, "worker.dead_lettered", logging.WARNING, job_id=job_id, reason=reason, error_type=error.type,
                  error=error.message[:200])
        # A timeout is the downstream's failure; a refusal (Reject) means the downstream answered.
        return outcome != "timeout" and not task.retryable(exc)

    async def release_job(self, job_id: uuid.UUID, start: StartResult) -> None:
        """Hand a job still running at shutdown back to the outbox (or dead-letter a spent one) as ``crashed``."""
        error = ErrorInfo("WorkerShutdown", "worker stopped before the job finished (grace period over)")
        if attempts_left(start.attempt, start.max_retries) > 0:
            await self.ledger.retry(job_id, start.attempt, 0.0, "crashed", error)
        else:
            await self.ledger.dead(job_id, start.attempt, "crashed", "crashed", error)
        event(log, "worker.released", job_id=job_id, attempt=start.attempt)


class TracingRecorder(Recorder):
    """A :class:`Recorder` that also notes each outcome, and a handler's exception, on the delivery's
    ``process`` span (the current span while it is recorded). Used only with tracing on."""

    def count(self, key: str) -> None:
        """Count ``key`` and record it as the span's ``tierbox.outcome``."""
        super().count(key)
        tracing.outcome(key)

    async def _failed(self, d: Delivery, exc: BaseException, outcome: str) -> bool:
        tracing.failed(exc)
        return await super()._failed(d, exc, outcome)
