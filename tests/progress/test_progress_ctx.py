"""``ctx.progress`` in-process (``outbox.testing.drain``) and the job capability, on the real ledger."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import msgspec
import psycopg
import pytest

import outbox
import outbox.testing
from outbox import _progress
from outbox._maintenance import prune
from outbox.registry import Registry, registry
from tests import sample_tasks  # registers sample.progress (its handler is replaced per test)

SECRET = "s" * 40


def _drain_with(conn: psycopg.Connection, fn: Callable[..., Any], **enqueue: Any) -> tuple[uuid.UUID, str]:
    """Enqueue sample.progress and drain it with ``fn`` as its handler; returns (job id, status)."""
    real = registry.get("sample.progress")
    assert real is not None
    reg = Registry()
    reg.add(msgspec.structs.replace(real, fn=fn, takes_context=True))
    job_id = outbox.enqueue(conn, "sample.progress", **enqueue)
    [ran] = outbox.testing.drain(conn, registry_=reg, jobs=[job_id])
    return job_id, ran.status


def events(conn: psycopg.Connection, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return conn.execute("SELECT kind, status, fraction, message, data FROM outbox.job_events "
                        "WHERE job_id = %s ORDER BY id", (job_id,)).fetchall()


@pytest.mark.parametrize(("args", "field", "says"), [
    ((-0.1,), "fraction", "from 0 to 1"),
    ((1.5,), "fraction", "from 0 to 1"),
    ((float("nan"),), "fraction", "from 0 to 1"),
    (("0.5",), "fraction", "not str"),
    ((True,), "fraction", "not bool"),
    ((0.5, "x" * 1001), "message", "at most 1000"),
    ((0.5, 7), "message", "not int"),
    ((0.5, "a\x00b"), "message", "NUL"),
    ((0.5, None, {"when": object()}), "data", "not JSON-encodable"),
    ((0.5, None, {"blob": "x" * 9000}), "data", "at most 8192"),
])
def test_bad_progress_is_refused_naming_the_field(tx: psycopg.Connection, args: tuple[Any, ...], field: str,
                                                  says: str) -> None:
    caught: list[outbox.ProgressError] = []

    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        try:
            ctx.progress(*args)
        except outbox.ProgressError as exc:
            caught.append(exc)
            raise

    job_id, status = _drain_with(tx, handler)
    assert status == "dead" and len(caught) == 1
    assert caught[0].field == field and says in str(caught[0]), str(caught[0])
    assert isinstance(caught[0], ValueError)
    assert [e[0] for e in events(tx, job_id)] == ["status", "outcome"]  # nothing written


def test_events_in_order_and_throttled(tx: psycopg.Connection) -> None:
    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        for step in range(1, 6):  # five calls at once: the first is written, the rest held ...
            ctx.progress(step / 10, f"fast {step}")
        time.sleep(_progress.MIN_INTERVAL_S + 0.05)
        ctx.progress(0.6, "after the interval", {"k": [1, 2]})  # ... and replaced by this one, written
        ctx.progress(0.7, "held, then written at the handler's return")

    job_id, status = _drain_with(tx, handler)
    assert status == "succeeded"
    assert events(tx, job_id) == [
        ("status", "running", None, None, {"attempt": 1}),
        ("progress", None, 0.1, "fast 1", None),
        ("progress", None, 0.6, "after the interval", {"k": [1, 2]}),
        ("progress", None, 0.7, "held, then written at the handler's return", None),
        ("outcome", "succeeded", None, None, {"attempt": 1}),
    ]


def test_fraction_one_is_never_held(tx: psycopg.Connection) -> None:
    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        ctx.progress(0.5)
        ctx.progress(1.0, "done")

    job_id, _ = _drain_with(tx, handler)
    assert [e[2] for e in events(tx, job_id) if e[0] == "progress"] == [0.5, 1.0]


def test_progress_survives_the_handlers_rollback(tx: psycopg.Connection) -> None:
    tx.execute(sample_tasks.EFFECTS_DDL)

    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        ctx.session.execute("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (%s, 1, 'x')",
                            (ctx.job_id,))
        ctx.progress(0.4, "before the failure")
        raise RuntimeError("boom")

    job_id, status = _drain_with(tx, handler)
    assert status == "dead"
    assert tx.execute("SELECT count(*) FROM public.test_effects WHERE job_id = %s", (job_id,)).fetchone() == (0,)
    assert [(e[0], e[1] or e[3]) for e in events(tx, job_id)] == [
        ("status", "running"), ("progress", "before the failure"), ("outcome", "dead")]


def test_progress_of_a_job_not_running_is_not_written(tx: psycopg.Connection) -> None:
    from outbox import _queries
    from outbox._sql import run

    job_id = outbox.enqueue(tx, "sample.progress")
    rows = run(tx, _queries.INSERT_PROGRESS, {"job_id": job_id, "attempt": 1, "fraction": 0.5, "message": None,
                                              "data": None})
    assert rows == [] and events(tx, job_id) == []


def test_prune_deletes_a_jobs_events_with_it(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        job_id, status = _drain_with(conn, lambda ctx, **_: ctx.progress(1.0))
        keep, _ = _drain_with(conn, lambda ctx, **_: ctx.progress(1.0))
        assert status == "succeeded" and len(events(conn, job_id)) == 3
        conn.execute("UPDATE outbox.jobs SET finished_at = now() - interval '8 days' WHERE id = %s", (job_id,))
        conn.commit()
        assert prune(conn, succeeded_days=7, dead_days=30) == 1
        assert events(conn, job_id) == [] and len(events(conn, keep)) == 3


def test_capability_grants_one_job_until_it_expires() -> None:
    job = uuid.uuid4()
    token = outbox.job_capability(job, SECRET, ttl_s=60)
    _progress.verify_capability(token, job, SECRET)
    version, job_hex, expires, _ = token.split(".")
    assert version == "v1" and job_hex == job.hex and int(expires) > time.time()
    refusals = {
        "another job": (token, uuid.uuid4(), SECRET, None),
        "expired": (token, job, SECRET, time.time() + 61),
        "signature": (token[:-2] + ("AA" if not token.endswith("AA") else "BB"), job, SECRET, None),
        "signature does not match": (f"v1.{job_hex}.{int(expires) + 1000}.{token.split('.')[3]}", job, SECRET, None),
        "malformed": ("v2." + token[3:], job, SECRET, None),
    }
    for says, (tok, for_job, secret, now) in refusals.items():
        with pytest.raises(outbox.CapabilityError, match=says):
            _progress.verify_capability(tok, for_job, secret, now=now)
    with pytest.raises(outbox.CapabilityError, match="signature"):
        _progress.verify_capability(token, job, "t" * 40)
    with pytest.raises(outbox.CapabilityError, match="at least 32 bytes"):
        outbox.job_capability(job, "short")
    with pytest.raises(outbox.CapabilityError, match="ttl_s"):
        outbox.job_capability(job, SECRET, ttl_s=0)


def test_only_watched_jobs_notify(db_url: str) -> None:
    from outbox import _queries
    from outbox._sql import run

    def handler(ctx: outbox.TaskContext, **_: Any) -> None:
        ctx.progress(0.5)

    with psycopg.connect(db_url, autocommit=True) as listener, psycopg.connect(db_url) as conn:
        listener.execute("LISTEN tierbox_job_events")
        unwatched, _ = _drain_with(conn, handler)
        conn.commit()
        watched = outbox.enqueue(conn, "sample.progress")
        run(conn, _queries.WATCH_JOBS, {"job_ids": [watched], "ttl_s": 60.0})
        conn.commit()
        expired = outbox.enqueue(conn, "sample.progress")
        run(conn, _queries.WATCH_JOBS, {"job_ids": [expired], "ttl_s": 0.001})
        conn.commit()
        time.sleep(0.01)
        reg = Registry()
        real = registry.get("sample.progress")
        assert real is not None
        reg.add(msgspec.structs.replace(real, fn=handler, takes_context=True))
        outbox.testing.drain(conn, registry_=reg, jobs=[watched, expired])
        conn.commit()
        # One transaction: NOTIFY folds identical payloads into one; only the watched job sends any.
        payloads = [n.payload for n in listener.notifies(timeout=1.0)]
        assert payloads == [str(watched)], (payloads, unwatched, expired)
        assert len(events(conn, unwatched)) == len(events(conn, watched)) == 3  # the events are written alike
        run(conn, _queries.UNWATCH_EXPIRED)
        assert conn.execute("SELECT job_id FROM outbox.job_watchers").fetchall() == [(watched,)]


def test_a_retry_an_expiry_and_a_discard_are_events_of_their_jobs(tx: psycopg.Connection) -> None:
    """The trigger ``record_job_event`` for the statuses the tests above do not reach: a retried
    attempt and the next one, an expiry as the relay records it, a dead letter discarded."""
    from outbox import _transitions
    from outbox._sql import run

    def fails_once(ctx: outbox.TaskContext, **_: Any) -> None:
        ctx.progress(0.5, f"attempt {ctx.attempt}")
        if ctx.attempt == 1:
            raise ConnectionError("first attempt fails")

    job_id, first = _drain_with(tx, fails_once, max_retries=1)
    reg = Registry()
    real = registry.get("sample.progress")
    assert real is not None
    reg.add(msgspec.structs.replace(real, fn=fails_once, takes_context=True))
    [second] = outbox.testing.drain(tx, registry_=reg, jobs=[job_id])
    assert (first, second.status) == ("retrying", "succeeded")
    assert events(tx, job_id) == [
        ("status", "running", None, None, {"attempt": 1}),
        ("progress", None, 0.5, "attempt 1", None),
        ("status", "retrying", None, None, {"attempt": 1}),
        ("status", "running", None, None, {"attempt": 2}),
        ("progress", None, 0.5, "attempt 2", None),
        ("outcome", "succeeded", None, None, {"attempt": 2}),
    ]

    # Expired before it was published, by the relay's own statement: never ran, so attempt 0.
    expired = outbox.enqueue(tx, "sample.progress", expires=60.0)
    run(tx, _transitions.MARK_EXPIRED, {"ids": [expired]})
    assert events(tx, expired) == [("outcome", "expired", None, None, {"attempt": 0})]

    def refuses(ctx: outbox.TaskContext, **_: Any) -> None:
        raise outbox.Reject("no")

    dead, status = _drain_with(tx, refuses)
    assert status == "dead"
    outbox.discard(tx, dead, by="test", reason="seen")
    assert events(tx, dead) == [("status", "running", None, None, {"attempt": 1}),
                                ("outcome", "dead", None, None, {"attempt": 1}),
                                ("outcome", "discarded", None, None, {"attempt": 1})]
    run(tx, _transitions.MARK_EXPIRED, {"ids": [dead]})
    assert len(events(tx, dead)) == 3, "a finished job does not expire: no event"
