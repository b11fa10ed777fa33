"""Test data made the way Tierbox makes it: dead letters come from real failing runs, not from SQL."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

import outbox
import outbox.testing
from outbox import _encoding as encoding
from outbox import _transitions as transitions
from outbox._attempts import attempts_left
from outbox._failure import ErrorInfo
from outbox._sql import run
from outbox.registry import Registry, Task, registry
from tierbox.workers.execute import AttemptTimeout
from tierbox.workers.ledger import dead_message_params


def _fails(*_: Any, **__: Any) -> None:
    raise RuntimeError("boom")


def _rejects(*_: Any, **__: Any) -> None:
    raise outbox.Reject("boom")


def dead_job(conn: Any, task: str = "sample.invoice",
             reason: Literal["failed", "non_retryable", "timeout"] = "failed",
             failed_ago: str = "0 minutes") -> uuid.UUID:
    """A job dead-lettered by the real failure path, in ``conn``'s transaction; returns its id.

    The job is enqueued (args ``[1]``, kwargs ``{"note": "x"}``, header ``tenant=acme``) and run by
    :func:`outbox.testing.drain` (the ledger's own start, retry and dead transitions) with a handler
    that raises ``RuntimeError("boom")`` on every attempt until its retries are spent (reason
    ``failed``) or raises ``Reject("boom")`` (``non_retryable``). ``timeout``: every attempt ends as a
    worker ends one past the task's ``timeout_s`` (see :func:`_time_out`). Only the clock is faked:
    ``failed_ago`` moves the dead letter's ``failed_at`` and the job's ``finished_at`` back, for tests
    of time windows and retention.
    """
    job_id = outbox.enqueue(conn, task, args=[1], kwargs={"note": "x"}, headers={"tenant": "acme"})
    real = registry.get(task)
    assert real is not None, f"{task} is not registered (import tests.sample_tasks)"
    if reason == "timeout":
        _time_out(conn, job_id, real)
    else:
        failing = Registry()
        failing.add(msgspec.structs.replace(real, fn=_fails if reason == "failed" else _rejects, takes_context=False))
        for _ in range(real.max_retries + 1):
            [ran] = outbox.testing.drain(conn, registry_=failing, jobs=[job_id])
            if ran.status == "dead":
                break
            assert ran.status == "retrying", ran
        else:
            raise AssertionError(f"{task} did not reach its dead letter in {real.max_retries + 1} attempts")
    if failed_ago != "0 minutes":
        conn.execute("UPDATE outbox.dead_letters SET failed_at = failed_at - CAST(%s AS interval) WHERE job_id = %s",
                     (failed_ago, job_id))
        conn.execute("UPDATE outbox.jobs SET finished_at = finished_at - CAST(%s AS interval) WHERE id = %s",
                     (failed_ago, job_id))
    return job_id


def _time_out(conn: Any, job_id: uuid.UUID, task: Task) -> None:
    """Run ``job_id`` to a ``timeout`` dead letter through the ledger's transitions, as a worker records it.

    ``outbox.testing.drain`` runs handlers in-process with no time limit, so the attempts are ended here
    with what ``tierbox.workers.outcomes`` passes for outcome ``timeout``: the executor's own
    ``AttemptTimeout`` error, ``RETRY`` while :func:`attempts_left` allows, then ``DEAD`` with reason
    ``timeout``.
    """
    error = ErrorInfo.of(AttemptTimeout(f"{task.name} exceeded its timeout of {task.timeout_s}s")).params()
    while True:
        [start] = run(conn, transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": outbox.testing.TESTING_WORKER_ID,
                                                        "lease_s": 3600.0, "acked_early": False, "token": None})
        assert start.decision == "run", start
        if attempts_left(start.attempt, start.max_retries) == 0:
            run(conn, transitions.DEAD, {"job_id": job_id, "attempt": start.attempt, "reason": "timeout",
                                         "outcome": "timeout", **error})
            return
        run(conn, transitions.RETRY, {"job_id": job_id, "attempt": start.attempt, "delay_s": 0.0,
                                      "outcome": "timeout", **error})
        run(conn, transitions.TESTING_DUE_NOW, {"job_id": job_id})


def undecodable_message(conn: Any, body: bytes = b"garbage", tier: str = "high") -> None:
    """The dead letter a worker records for a message it cannot decode, in ``conn``'s transaction.

    The error is the real envelope decoder's on ``body``; the row is written by the worker ledger's own
    statement and parameters (``DEAD_MESSAGE``, :func:`tierbox.workers.ledger.dead_message_params`).
    A worker publishes nothing for it: there is no job, so no job id.
    """
    try:
        encoding.decode_payload(encoding.decode_envelope(body).payload)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        # As workers/processing.py wraps the decoder's error for an Undeliverable("undecodable").
        error = ErrorInfo(type(exc).__name__, str(exc)[:2000])
    else:
        raise AssertionError(f"{body!r} decodes as a message")
    run(conn, transitions.DEAD_MESSAGE, dead_message_params(tier=tier, reason="undecodable", error=error,
                                                            raw_body=body, headers={}))
