"""Helpers for your own test suite: run enqueued jobs in-process, assert what was enqueued.

No broker and no worker process are needed. Both helpers work inside the
transaction you pass, so they fit the usual "roll back after each test"
fixture: jobs your code enqueued (committed or not) are visible to them.

::

    def test_checkout_sends_receipt(session):          # a SQLAlchemy Session
        checkout(session, order_id=7)                  # your code calls outbox.enqueue
        outbox.testing.assert_enqueued(session, "shop.send_receipt", args=[7])
        results = outbox.testing.drain(session)        # runs the handlers here
        assert [r.status for r in results] == ["succeeded"]

``drain`` goes through the same ledger transitions as a worker (the
``outbox.start_attempt`` SQL function, then the fenced success, retry or
dead-letter statements), each job in a savepoint so a failing handler's
writes are rolled back alone. ``ctx.session`` is the session you passed, so
pass a SQLAlchemy ``Session`` when handlers use it. ``async def`` handlers
are run with ``asyncio.run`` and also receive that sync session, so an async
handler that awaits ``ctx.session`` needs a real worker (see the README's
end-to-end test example); one that does not use the session drains fine.
``ctx.progress`` calls are
kept (throttled as in a worker) and written to ``outbox.job_events`` through your session when the
handler returns or raises. Retries are recorded
(status ``retrying``) but not run again within one drain; jobs a handler
enqueues are run in the same drain.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

from outbox import _queries as queries
from outbox import _transitions as transitions
from outbox._attempts import attempts_left
from outbox._encoding import decode_payload
from outbox._failure import ErrorInfo
from outbox._fingerprint import attach
from outbox._progress import BufferedProgress
from outbox._sql import run, savepoint
from outbox.context import TaskContext
from outbox.registry import Registry, Task, registry
from outbox.webhooks import result_params

TESTING_WORKER_ID = "outbox.testing"


class DrainedJob(msgspec.Struct, frozen=True):
    """One job :func:`drain` ran: its final status and, if it failed, the error."""

    job_id: uuid.UUID
    task: str
    status: str
    error: str | None = None


class EnqueuedJob(msgspec.Struct, frozen=True):
    """A job visible to the session, as :func:`enqueued` returns it."""

    job_id: uuid.UUID
    task: str
    tier: str
    args: list[Any]
    kwargs: dict[str, Any]
    status: str
    idempotency_key: str | None


def enqueued(session: Any, task: Task | str | None = None) -> list[EnqueuedJob]:
    """Jobs visible to ``session``'s transaction (optionally of one task), newest first."""
    name = task.name if isinstance(task, Task) else task
    out = []
    for row in run(session, queries.TESTING_JOBS, {"task": name}):
        p = decode_payload(row.payload.encode())
        out.append(EnqueuedJob(row.job_id, row.task, row.tier, p.args, p.kwargs, row.status, row.idempotency_key))
    return out


def assert_enqueued(session: Any, task: Task | str, *, args: Sequence[Any] | None = None,
                    kwargs: dict[str, Any] | None = None, tier: str | None = None) -> EnqueuedJob:
    """Assert ``session``'s transaction enqueued ``task`` (with these args/kwargs/tier); returns the job."""
    candidates = enqueued(session, task)
    for job in candidates:
        if ((args is None or job.args == list(args)) and (kwargs is None or job.kwargs == kwargs)
                and (tier is None or job.tier == str(tier))):
            return job
    name = task.name if isinstance(task, Task) else task
    seen = [(j.args, j.kwargs, j.tier) for j in candidates] or "no jobs of that task"
    raise AssertionError(f"expected {name} enqueued with args={args} kwargs={kwargs} tier={tier}; found {seen}")


def drain(session: Any, *, max_jobs: int = 1000, registry_: Registry | None = None,
          jobs: Iterable[uuid.UUID] | None = None) -> list[DrainedJob]:
    """Run every due job visible to ``session``, in-process, until none is left; never commits.

    Each job runs at most once per call (a retry that falls due at once waits for the next call).
    ``jobs`` limits the run to those ids; every other job stays pending.
    """
    reg = registry_ or registry
    only = None if jobs is None else list(jobs)
    results: list[DrainedJob] = []
    seen: list[uuid.UUID] = []
    while len(results) < max_jobs:
        rows = run(session, queries.TESTING_DUE, {"skip": seen, "limit": 100, "only": only})
        if not rows:
            break
        for row in rows:
            seen.append(row.job_id)
            results.append(_run_one(session, reg, row.job_id, row.task, row.tier, row.payload))
    return results


def _run_one(session: Any, reg: Registry, job_id: uuid.UUID, task_name: str, tier: str, payload: str) -> DrainedJob:
    start = run(session, transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": TESTING_WORKER_ID,
                                                  "lease_s": 3600.0, "acked_early": False,
                                                  "token": None})[0]
    if start.decision != "run":
        return DrainedJob(job_id, task_name, start.decision)
    task = reg.get(task_name)
    attempt, max_retries = start.attempt, start.max_retries
    ctx = TaskContext(job_id=job_id, task=task_name, tier=tier, attempt=attempt, max_retries=max_retries,
                      enqueued_at=start.enqueued_at, headers=start.headers or {}, session=session,
                      progress_writer=BufferedProgress(job_id, attempt))
    progress = ctx.progress_writer
    assert isinstance(progress, BufferedProgress)
    try:
        if task is None:
            raise LookupError(f"no handler registered as {task_name!r}")
        with savepoint(session):
            value = _call(task, decode_payload(payload.encode()), ctx)
            if task.webhook_result:  # sent in its completion webhook (docs/webhooks.md)
                run(session, queries.RECORD_RESULT, result_params(job_id, value))
            progress.flush_to(session)  # before the success: the last progress precedes the outcome
            run(session, transitions.SUCCEED, {"job_id": job_id, "attempt": attempt})
        return DrainedJob(job_id, task_name, "succeeded")
    except Exception as exc:  # noqa: BLE001 - recorded in the ledger like a worker would
        attach(exc, ctx.fingerprint)  # the handler's ctx.set_fingerprint(), as the worker does
        progress.flush_to(session)  # the handler's rollback keeps its progress, as in a worker
        return _fail(session, task, job_id, task_name, attempt, max_retries, exc)


def _fail(session: Any, task: Task | None, job_id: uuid.UUID, task_name: str, attempt: int, max_retries: int,
          exc: Exception) -> DrainedJob:
    error = ErrorInfo.of(exc).params()
    retryable = task is not None and task.retryable(exc)
    if retryable and attempts_left(attempt, max_retries) > 0:
        run(session, transitions.RETRY, {"job_id": job_id, "attempt": attempt, "delay_s": 0.0, "outcome": "failed",
                                     **error})
        run(session, transitions.TESTING_DUE_NOW, {"job_id": job_id})
        return DrainedJob(job_id, task_name, "retrying", f"{type(exc).__name__}: {exc}")
    reason = "unknown_task" if task is None else ("failed" if retryable else "non_retryable")
    run(session, transitions.DEAD, {"job_id": job_id, "attempt": attempt, "reason": reason, "outcome": "failed",
                                **error})
    return DrainedJob(job_id, task_name, "dead", f"{type(exc).__name__}: {exc}")


def _call(task: Task, payload: Any, ctx: TaskContext) -> Any:
    args, kwargs = task.arguments(payload.args, payload.kwargs, ctx)
    result = task.fn(*args, **kwargs)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result
