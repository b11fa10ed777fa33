"""Test data made the way Tierbox makes it: dead letters come from real failing runs, not from SQL."""

from __future__ import annotations

import uuid
from typing import Any, Literal

import msgspec

import outbox
import outbox.testing
from outbox.registry import Registry, registry


def _fails(*_: Any, **__: Any) -> None:
    raise RuntimeError("boom")


def _rejects(*_: Any, **__: Any) -> None:
    raise outbox.Reject("boom")


def dead_job(conn: Any, task: str = "sample.invoice", reason: Literal["failed", "non_retryable"] = "failed",
             failed_ago: str = "0 minutes") -> uuid.UUID:
    """A job dead-lettered by the real failure path, in ``conn``'s transaction; returns its id.

    The job is enqueued (args ``[1]``, kwargs ``{"note": "x"}``, header ``tenant=acme``) and run by
    :func:`outbox.testing.drain` (the ledger's own start, retry and dead transitions) with a handler
    that raises ``RuntimeError("boom")`` on every attempt until its retries are spent (reason
    ``failed``) or raises ``Reject("boom")`` (``non_retryable``). Only the clock is faked:
    ``failed_ago`` moves the dead letter's ``failed_at`` back, for tests of time windows.
    """
    job_id = outbox.enqueue(conn, task, args=[1], kwargs={"note": "x"}, headers={"tenant": "acme"})
    real = registry.get(task)
    assert real is not None, f"{task} is not registered (import tests.sample_tasks)"
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
    return job_id
