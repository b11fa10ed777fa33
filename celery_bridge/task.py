"""``LedgerTask``: the Celery task base class that records each execution in Tierbox's ledger.

Why a base class and not signal handlers: a redelivered duplicate must not run, and Celery offers
no way to skip a task from a signal (``task_prerun`` receivers' exceptions are logged and
swallowed). A custom ``__call__`` is what Celery's tracer calls instead of ``run`` (``celery.app.trace``:
``fun = task if task_has_custom(task, '__call__') else task.run``), and an ``Ignore`` raised there
acks the message with the state IGNORED, without calling the task's code.

For each delivery the relay marked as a Tierbox job (the ``tierbox_job`` header,
:data:`outbox.celery.JOB_MARKER`, naming the job id, which is also the task id):

1. ``outbox.start_attempt`` counts the attempt and takes a lease, or answers why it must not run
   (``finished``: a duplicate of a job already done; ``running``: another worker has it;
   ``not_due``: a retry arriving before its time; ``expired``): those raise ``Ignore``.
2. the task runs (``self.run``: with ``autoretry_for`` that is Celery's retrying wrapper);
3. the outcome is recorded: success (``SUCCEED``); ``Retry`` from ``self.retry`` or ``autoretry_for``
   (``RETRY``: the failed attempt, and the job due again through the outbox after Celery's
   countdown); any other exception, Celery's final failure (``DEAD``: a dead letter
   ``outbox.redrive`` sends back through the outbox to the Celery queue).

Retries go through the outbox, not through a message Celery publishes: ``self.retry`` keeps all of
Celery's logic (``max_retries``, ``countdown``/``eta``, ``autoretry_for`` with ``retry_backoff`` and
``retry_jitter``, ``MaxRetriesExceededError``) but its new message is not sent
(:meth:`LedgerTask.signature_from_request`); the relay publishes the job again when the ledger's
``RETRY`` makes it due, with ``retries`` = attempts so far. One copy per retry, durable in Postgres
(a Celery countdown message waits unacknowledged in a worker's memory). ``self.retry(args=...)``
with new arguments is refused: the outbox re-sends the job as it was enqueued.

A delivery without the marker (``.delay()``/``apply_async`` of the app's own, whose ids are UUIDs
too) runs untouched and unrecorded, without a word to the ledger: the ledger database is a
dependency of Tierbox jobs only. A marked delivery the ledger cannot start (Postgres unreachable, the
schema not migrated) is sent again in 5 s, unchanged, and waits that way until the ledger answers.
A worker killed mid-task (a crash, or the prefork pool's hard ``time_limit``) leaves its lease to
expire; the reaper (Tierbox workers, and each Celery process every 30 s) retries or dead-letters the
job through the outbox.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from typing import Any

from celery import Task  # type: ignore[import-untyped]
from celery.canvas import Signature  # type: ignore[import-untyped]
from celery.exceptions import (  # type: ignore[import-untyped]
    Ignore,
    Reject,
    Retry,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
)

from outbox._failure import ErrorInfo
from outbox._logs import event
from outbox.celery import JOB_MARKER
from outbox.registry import DEFAULT_TIMEOUT_S
from tierbox.celery.ledger import CeleryLedger

log = logging.getLogger("tierbox.celery")

#: Seconds before a delivery the ledger could not start (Postgres unreachable) is tried again.
LEDGER_UNAVAILABLE_RETRY_S = 5.0
#: Where :func:`tierbox.celery.install` keeps the app's ledger.
APP_ATTRIBUTE = "tierbox_ledger"
#: Set on a delivery's ``request`` once its attempt is recorded: its retries go through the outbox.
RETRY_THROUGH_OUTBOX = "tierbox_retry_through_outbox"


class _NotSent(Signature):  # type: ignore[misc]
    """The retry message Celery would publish, not published: the outbox sends the job again."""

    def apply_async(self, *args: Any, **kwargs: Any) -> None:
        return None


class LedgerTask(Task):  # type: ignore[misc]  # Celery has no type information
    """A Celery ``Task`` whose every execution of a Tierbox job is recorded in the ledger."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        request = self.request
        job_id = _job_id(request)
        ledger: CeleryLedger | None = getattr(self.app, APP_ATTRIBUTE, None)
        if job_id is None or ledger is None or request.is_eager:
            return self.run(*args, **kwargs)
        try:
            started = ledger.start(job_id, self._lease_s(ledger.lease_margin_s), acked_early=not self.acks_late)
        except Exception as exc:
            # Postgres unreachable: the message must not be lost, nor count as a Celery retry. The same
            # delivery again (same id, args and retries), later; then this one ends.
            event(log, "celery.ledger_unavailable", logging.WARNING, job_id=job_id, error=type(exc).__name__)
            self.signature_from_request(request, countdown=LEDGER_UNAVAILABLE_RETRY_S,
                                        retries=request.retries).apply_async()
            raise Ignore() from exc
        if started.decision == "unknown":
            # Marked, yet the ledger has no such job: this worker's TIERBOX_DATABASE_URL names another
            # database than the relay's, or retention deleted the job. Run it as Celery would, unrecorded
            # (refusing would lose it), and say so loudly.
            event(log, "celery.unknown_job", logging.WARNING, job_id=job_id, task=self.name)
            return self.run(*args, **kwargs)
        if started.decision != "run":
            event(log, "celery.skipped", job_id=job_id, task=self.name, decision=started.decision)
            raise Ignore()
        attempt = started.attempt
        setattr(request, RETRY_THROUGH_OUTBOX, True)
        try:
            result = self.run(*args, **kwargs)
        except Retry as exc:
            cause = exc.exc if isinstance(exc.exc, BaseException) else exc
            ledger.retry(job_id, attempt, _retry_delay_s(exc.when), _outcome(cause), ErrorInfo.of(cause))
            event(log, "celery.retry", job_id=job_id, task=self.name, attempt=attempt)
            raise
        except Ignore:
            ledger.succeed(job_id, attempt)  # the task chose to end without a result; Celery will not run it again
            raise
        except Reject as exc:
            ledger.dead(job_id, attempt, "non_retryable", "failed", ErrorInfo.of(exc))
            raise
        except Exception as exc:
            outcome = _outcome(exc)
            ledger.dead(job_id, attempt, "timeout" if outcome == "timeout" else "failed", outcome, ErrorInfo.of(exc))
            event(log, "celery.dead", logging.WARNING, job_id=job_id, task=self.name, attempt=attempt,
                  error=type(exc).__name__)
            raise
        if not ledger.succeed(job_id, attempt):
            event(log, "celery.success_fenced", logging.WARNING, job_id=job_id, attempt=attempt)
        return result

    def retry(self, args: Any = None, kwargs: Any = None, *rest: Any, **options: Any) -> Any:
        """Celery's ``retry``; for a recorded Tierbox delivery the retry goes through the outbox."""
        if (args is not None or kwargs is not None) and getattr(self.request, RETRY_THROUGH_OUTBOX, False):
            raise ValueError("tierbox.celery: a Tierbox job is retried with the arguments it was enqueued with; "
                             "retry(args=/kwargs=) cannot change them")
        return super().retry(args, kwargs, *rest, **options)

    def signature_from_request(self, request: Any = None, *args: Any, **kwargs: Any) -> Any:
        """Celery's, except for the retry of a recorded Tierbox delivery: a signature that is not sent."""
        signature = super().signature_from_request(request, *args, **kwargs)
        if getattr(request if request is not None else self.request, RETRY_THROUGH_OUTBOX, False):
            return _NotSent(signature, app=self.app)
        return signature

    def _lease_s(self, margin_s: float) -> float:
        """How long the attempt may run before the reaper takes it for crashed: the hard time limit
        (the message's, else the task's, else the app's; else Tierbox's default timeout) plus a margin."""
        limits = self.request.timelimit or (None, None)
        hard = limits[0] or self.time_limit or self.app.conf.task_time_limit or DEFAULT_TIMEOUT_S
        return float(hard) + margin_s


def _job_id(request: Any) -> uuid.UUID | None:
    """The Tierbox job this delivery runs, or None: not marked by the relay (a ``.delay()`` of the
    app's own), or the marker does not name the task id, or called directly."""
    task_id = getattr(request, "id", None)
    if not task_id:
        return None
    # Celery keeps headers it does not know in request.headers (and, by older versions, as attributes).
    headers = getattr(request, "headers", None)
    marker = headers.get(JOB_MARKER) if isinstance(headers, dict) else None
    if marker is None:
        marker = getattr(request, JOB_MARKER, None)
    if marker is None or str(marker) != str(task_id):
        return None
    try:
        return uuid.UUID(str(task_id))
    except ValueError:
        return None


def _outcome(exc: BaseException) -> str:
    """The attempt's outcome in the ledger: ``timeout`` for Celery's time limits, else ``failed``."""
    return "timeout" if isinstance(exc, (SoftTimeLimitExceeded, TimeLimitExceeded)) else "failed"


def _retry_delay_s(when: Any) -> float:
    """Seconds until Celery's retry is due (``Retry.when``: a countdown in seconds or an eta)."""
    if isinstance(when, (int, float)) and not isinstance(when, bool):
        return max(float(when), 0.0)
    if isinstance(when, dt.datetime):
        now = dt.datetime.now(when.tzinfo or dt.UTC) if when.tzinfo else dt.datetime.now()
        return max((when - now).total_seconds(), 0.0)
    return 0.0
