"""Transactional enqueue against real Postgres, through every connection kind it accepts."""

from __future__ import annotations

import datetime as dt
import importlib
import logging
import math
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.pq import TransactionStatus
from sqlalchemy import Engine, Integer, Text, create_engine, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

import outbox
from outbox._encoding import encode_payload
from outbox.errors import (
    EnqueueError,
    InvalidOptionError,
    InvalidScheduleError,
    PayloadEncodeError,
    PayloadTooLargeError,
    UnknownTaskError,
    UnknownTierError,
)
from outbox.registry import Registry, Task
from outbox.tiers import Tier
from tests import sample_tasks  # registers the sample tasks
from tests.helpers import wait_until

UTC = dt.UTC
# The module, not the function ``outbox.enqueue`` that shadows it as a package attribute.
enqueue_module = importlib.import_module("outbox.enqueue")


def sa_url(url: str) -> str:
    return "postgresql+psycopg://" + url.partition("://")[2]


# --------------------------------------------------------------------------- callers
# A "caller" is what an application hands to enqueue, in an open transaction,
# plus a way to query inside that same transaction and to end it.


class SyncCaller:
    def __init__(self, kind: str, target: Any, query: Callable[[str, dict[str, Any] | None], list[tuple[Any, ...]]],
                 commit: Callable[[], None], rollback: Callable[[], None], close: Callable[[], None]) -> None:
        self.kind, self.target, self._query = kind, target, query
        self.commit, self.rollback, self.close = commit, rollback, close

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        return self._query(sql, params)

    def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return self.query(sql, params)[0][0]


def open_sync(kind: str, engine: Engine, url: str) -> SyncCaller:
    if kind == "psycopg":
        conn = psycopg.connect(url)

        def pg_query(sql: str, params: dict[str, Any] | None) -> list[tuple[Any, ...]]:
            cur = conn.execute(_pg(sql), params)
            return cur.fetchall() if cur.description else []

        return SyncCaller(kind, conn, pg_query, conn.commit, conn.rollback, conn.close)
    if kind == "sa_connection":
        sconn = engine.connect()

        def conn_query(sql: str, params: dict[str, Any] | None) -> list[tuple[Any, ...]]:
            result = sconn.execute(text(sql), params or {})
            return [tuple(r) for r in result] if result.returns_rows else []

        return SyncCaller(kind, sconn, conn_query, sconn.commit, sconn.rollback, sconn.close)
    session = Session(engine)

    def session_query(sql: str, params: dict[str, Any] | None) -> list[tuple[Any, ...]]:
        # Through the session's connection: same transaction, and no autoflush.
        result = session.connection().execute(text(sql), params or {})
        return [tuple(r) for r in result] if result.returns_rows else []

    return SyncCaller(kind, session, session_query, session.commit, session.rollback, session.close)


def _pg(sql: str) -> str:
    """``:name`` parameters as psycopg's ``%(name)s``, the way the library converts its own statements."""
    from outbox._sql import Statement

    return Statement("test", sql).pg


SYNC_KINDS = ["sa_session", "sa_connection", "psycopg"]
ASYNC_KINDS = ["sa_async_session", "sa_async_connection", "psycopg_async"]


@pytest.fixture(scope="module")
def engine(shared_db_url: str) -> Iterator[Engine]:
    eng = create_engine(sa_url(shared_db_url))
    yield eng
    eng.dispose()


@pytest.fixture(params=SYNC_KINDS)
def caller(request: pytest.FixtureRequest, engine: Engine, shared_db_url: str) -> Iterator[SyncCaller]:
    """A sync caller in a transaction on the shared database, rolled back afterwards."""
    c = open_sync(request.param, engine, shared_db_url)
    try:
        yield c
    finally:
        c.rollback()
        c.close()


def other_count(url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    """A count seen from a separate, autocommit connection."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
        assert row is not None
        return int(row[0])


def job_row(c: SyncCaller, job_id: uuid.UUID) -> dict[str, Any]:
    rows = c.query("SELECT task, tier, priority, payload, headers, idempotency_key, status, attempts, max_retries, "
                   "available_at, expires_at FROM outbox.jobs WHERE id = :id", {"id": job_id})
    assert len(rows) == 1, rows
    keys = ("task", "tier", "priority", "payload", "headers", "idempotency_key", "status", "attempts",
            "max_retries", "available_at", "expires_at")
    return dict(zip(keys, rows[0], strict=True))


def pending_row(c: SyncCaller, job_id: uuid.UUID) -> dict[str, Any]:
    rows = c.query("SELECT tier, weight, priority, available_at, publish_attempts FROM outbox.pending "
                   "WHERE job_id = :id", {"id": job_id})
    assert len(rows) == 1, rows
    return dict(zip(("tier", "weight", "priority", "available_at", "publish_attempts"), rows[0], strict=True))


# --------------------------------------------------------------------------- writes, per connection kind


def test_enqueue_writes_job_and_pending_in_the_callers_transaction(caller: SyncCaller, shared_db_url: str) -> None:
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=[42], kwargs={"note": "é"},
                            headers={"trace": "abc", "n": 1})
    assert isinstance(job_id, uuid.UUID)

    job = job_row(caller, job_id)
    assert job["task"] == "sample.invoice"
    assert job["tier"] == "normal"
    assert job["priority"] == 5  # normal's weight: the task sets no priority
    assert job["payload"] == {"args": [42], "kwargs": {"note": "é"}}
    assert job["headers"] == {"trace": "abc", "n": 1}
    assert job["status"] == "pending" and job["attempts"] == 0 and job["max_retries"] == 3
    assert job["idempotency_key"] is None and job["expires_at"] is None

    pend = pending_row(caller, job_id)
    assert pend == {"tier": "normal", "weight": 5, "priority": 5, "available_at": job["available_at"],
                    "publish_attempts": 0}

    # Not committed: nobody else sees either row, and the caller's transaction is still open.
    assert other_count(shared_db_url, "SELECT count(*) FROM outbox.jobs WHERE id = %s", (job_id,)) == 0
    assert other_count(shared_db_url, "SELECT count(*) FROM outbox.pending WHERE job_id = %s", (job_id,)) == 0
    if caller.kind == "psycopg":
        assert caller.target.info.transaction_status == TransactionStatus.INTRANS
    else:
        assert caller.target.in_transaction()


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_commit_publishes_and_rollback_discards(kind: str, db_url: str) -> None:
    eng = create_engine(sa_url(db_url))
    try:
        c = open_sync(kind, eng, db_url)
        try:
            dropped = outbox.enqueue(c.target, "sample.otp", args=["+100"])
            assert c.scalar("SELECT count(*) FROM outbox.pending WHERE job_id = :id", {"id": dropped}) == 1
            c.rollback()
            assert c.scalar("SELECT count(*) FROM outbox.jobs") == 0

            kept = outbox.enqueue(c.target, "sample.otp", args=["+200"])
            assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 0
            c.commit()
        finally:
            c.close()
    finally:
        eng.dispose()
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs WHERE id = %s", (kept,)) == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.pending WHERE job_id = %s", (kept,)) == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.pending") == 1


class AsyncCaller:
    def __init__(self, kind: str, target: Any) -> None:
        self.kind, self.target = kind, target

    async def query(self, sql: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
        if self.kind == "psycopg_async":
            cur = await self.target.execute(_pg(sql), params)
            return await cur.fetchall() if cur.description else []
        conn = await self.target.connection() if self.kind == "sa_async_session" else self.target
        result = await conn.execute(text(sql), params or {})
        return [tuple(r) for r in result] if result.returns_rows else []

    async def scalar(self, sql: str, params: dict[str, Any] | None = None) -> Any:
        return (await self.query(sql, params))[0][0]

    async def commit(self) -> None:
        await self.target.commit()

    async def rollback(self) -> None:
        await self.target.rollback()


async def open_async(kind: str, engine: AsyncEngine, url: str) -> tuple[AsyncCaller, Callable[[], Any]]:
    if kind == "psycopg_async":
        conn = await psycopg.AsyncConnection.connect(url)
        return AsyncCaller(kind, conn), conn.close
    if kind == "sa_async_connection":
        aconn = await engine.connect()
        return AsyncCaller(kind, aconn), aconn.close
    session = AsyncSession(engine)
    return AsyncCaller(kind, session), session.close


@pytest.fixture
async def async_engine(shared_db_url: str) -> AsyncIterator[AsyncEngine]:
    eng = create_async_engine(sa_url(shared_db_url))
    yield eng
    await eng.dispose()


@pytest.fixture(params=ASYNC_KINDS)
async def acaller(request: pytest.FixtureRequest, async_engine: AsyncEngine,
                  shared_db_url: str) -> AsyncIterator[AsyncCaller]:
    c, close = await open_async(request.param, async_engine, shared_db_url)
    try:
        yield c
    finally:
        await c.rollback()
        await close()


async def test_enqueue_async_writes_in_the_callers_transaction(acaller: AsyncCaller, shared_db_url: str) -> None:
    job_id = await outbox.enqueue_async(acaller.target, "sample.webhook", args=["evt_1"], idempotency_key="k-async")
    rows = await acaller.query("SELECT task, tier, priority, payload, idempotency_key FROM outbox.jobs "
                               "WHERE id = :id", {"id": job_id})
    assert rows == [("sample.webhook", "high", 8, {"args": ["evt_1"], "kwargs": {}}, "k-async")]
    assert await acaller.query("SELECT tier, weight, priority FROM outbox.pending WHERE job_id = :id",
                               {"id": job_id}) == [("high", 8, 8)]
    assert other_count(shared_db_url, "SELECT count(*) FROM outbox.jobs WHERE id = %s", (job_id,)) == 0

    # Same key again in the same transaction: the same job, nothing new written.
    again = await outbox.enqueue_async(acaller.target, "sample.webhook", args=["evt_other"], idempotency_key="k-async")
    assert again == job_id
    assert await acaller.scalar("SELECT count(*) FROM outbox.jobs WHERE idempotency_key = 'k-async'") == 1

    ids = await outbox.enqueue_many_async(acaller.target, [outbox.job("sample.export", args=[i]) for i in range(50)])
    got = dict(await acaller.query("SELECT id, (payload->'args'->>0)::int FROM outbox.jobs WHERE id = ANY(:ids)",
                                   {"ids": ids}))
    assert [got[i] for i in ids] == list(range(50))


@pytest.mark.parametrize("kind", ASYNC_KINDS)
async def test_async_commit_publishes_and_rollback_discards(kind: str, db_url: str) -> None:
    eng = create_async_engine(sa_url(db_url))
    try:
        c, close = await open_async(kind, eng, db_url)
        try:
            dropped = await outbox.enqueue_async(c.target, "sample.otp", args=["+100"])
            assert await c.scalar("SELECT count(*) FROM outbox.pending WHERE job_id = :id", {"id": dropped}) == 1
            await c.rollback()
            assert await c.scalar("SELECT count(*) FROM outbox.jobs") == 0

            kept = await outbox.enqueue_async(c.target, "sample.otp", args=["+200"])
            assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 0
            await c.commit()
        finally:
            await close()
    finally:
        await eng.dispose()
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs WHERE id = %s", (kept,)) == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.pending WHERE job_id = %s", (kept,)) == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 1


async def test_wrong_connection_kind_is_refused(tx: psycopg.Connection, async_engine: AsyncEngine) -> None:
    with pytest.raises(TypeError, match="session"):
        outbox.enqueue(AsyncSession(async_engine), "sample.otp", args=["+1"])
    with pytest.raises(TypeError, match="session"):
        outbox.enqueue(object(), "sample.otp", args=["+1"])
    assert tx.execute("SELECT 1").fetchone() == (1,)


# --------------------------------------------------------------------------- ORM: no flush, no commit


class Base(DeclarativeBase):
    pass


class Widget(Base):
    __tablename__ = "enqueue_test_widgets"
    __table_args__ = {"schema": "public"}

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Text)


WIDGETS_DDL = "CREATE TABLE public.enqueue_test_widgets (id serial PRIMARY KEY, name text NOT NULL)"


def test_enqueue_does_not_flush_or_commit_the_session(db_url: str) -> None:
    eng = create_engine(sa_url(db_url))
    try:
        with psycopg.connect(db_url, autocommit=True) as admin:
            admin.execute(WIDGETS_DDL)
        session = Session(eng)  # autoflush on, as applications have it
        try:
            widget = Widget(name="pending widget")
            session.add(widget)
            job_id = outbox.enqueue(session, "sample.invoice", args=[1])

            assert widget in session.new  # not flushed
            assert widget.id is None
            conn = session.connection()
            assert conn.execute(text("SELECT count(*) FROM public.enqueue_test_widgets")).scalar_one() == 0
            assert conn.execute(text("SELECT count(*) FROM outbox.jobs WHERE id = :id"),
                                {"id": job_id}).scalar_one() == 1
            assert session.in_transaction()
            assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 0  # not committed

            session.commit()  # the caller decides: both the widget and the job land together
        finally:
            session.close()
    finally:
        eng.dispose()
    assert other_count(db_url, "SELECT count(*) FROM public.enqueue_test_widgets") == 1
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs WHERE id = %s", (job_id,)) == 1


async def test_enqueue_async_does_not_flush_the_async_session(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as admin:
        admin.execute(WIDGETS_DDL)
    eng = create_async_engine(sa_url(db_url))
    try:
        async with AsyncSession(eng) as session:
            widget = Widget(name="pending widget")
            session.add(widget)
            job_id = await outbox.enqueue_async(session, "sample.invoice", args=[1])
            assert widget in session.new
            conn = await session.connection()
            assert (await conn.execute(text("SELECT count(*) FROM public.enqueue_test_widgets"))).scalar_one() == 0
            assert (await conn.execute(text("SELECT count(*) FROM outbox.jobs WHERE id = :id"),
                                       {"id": job_id})).scalar_one() == 1
            assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 0
            await session.rollback()
    finally:
        await eng.dispose()
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 0
    assert other_count(db_url, "SELECT count(*) FROM public.enqueue_test_widgets") == 0


# --------------------------------------------------------------------------- idempotency and batches


def test_idempotency_key_gives_one_job_and_the_same_id(caller: SyncCaller) -> None:
    key = f"order-{uuid.uuid4()}"
    first = outbox.enqueue(caller.target, "sample.invoice", args=[1], idempotency_key=key)
    second = outbox.enqueue(caller.target, "sample.invoice", args=[2], idempotency_key=key)
    assert first == second
    assert caller.scalar("SELECT count(*) FROM outbox.jobs WHERE idempotency_key = :k", {"k": key}) == 1
    assert caller.scalar("SELECT count(*) FROM outbox.pending WHERE job_id = :id", {"id": first}) == 1
    assert job_row(caller, first)["payload"] == {"args": [1], "kwargs": {}}  # the first call wins
    # A different key is a different job.
    assert outbox.enqueue(caller.target, "sample.invoice", args=[1], idempotency_key=key + "-b") != first


def test_idempotency_key_across_committed_transactions(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        first = outbox.enqueue(conn, "sample.invoice", args=[1], idempotency_key="k1")
    with psycopg.connect(db_url) as conn:
        assert outbox.enqueue(conn, "sample.invoice", args=[1], idempotency_key="k1") == first
        ids = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[2], idempotency_key="k2"),
                                         outbox.job("sample.invoice", args=[1], idempotency_key="k1")])
        assert ids[1] == first and ids[0] != first
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 2
    assert other_count(db_url, "SELECT count(*) FROM outbox.pending") == 2


def test_idempotency_key_racing_a_concurrent_transaction(db_url: str) -> None:
    """The second caller waits on the first's uncommitted key and then returns the first's id."""
    first_conn = psycopg.connect(db_url)
    second_conn = psycopg.connect(db_url)
    try:
        first = outbox.enqueue(first_conn, "sample.invoice", args=[1], idempotency_key="race")
        result: dict[str, Any] = {}

        def second_caller() -> None:
            try:
                result["id"] = outbox.enqueue(second_conn, "sample.invoice", args=[2], idempotency_key="race")
            except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
                result["error"] = exc

        worker = threading.Thread(target=second_caller)
        worker.start()
        pid = second_conn.info.backend_pid
        wait_until(lambda: other_count(db_url, "SELECT count(*) FROM pg_stat_activity WHERE pid = %s "
                                               "AND wait_event_type = 'Lock'", (pid,)) == 1,
                   what="the second enqueue to wait on the first's key")
        first_conn.commit()
        worker.join(10)
        assert not worker.is_alive()
        assert "error" not in result, result.get("error")
        assert result["id"] == first
        second_conn.commit()
    finally:
        first_conn.close()
        second_conn.close()
    assert other_count(db_url, "SELECT count(*) FROM outbox.jobs") == 1


def test_enqueue_many_ten_thousand_in_input_order(caller: SyncCaller) -> None:
    n = 10_000
    ids = outbox.enqueue_many(caller.target, [outbox.job("sample.export", args=[i]) for i in range(n)])
    assert len(ids) == n and len(set(ids)) == n
    got = dict(caller.query("SELECT id, (payload->'args'->>0)::int FROM outbox.jobs WHERE id = ANY(:ids)",
                            {"ids": ids}))
    assert [got[i] for i in ids] == list(range(n))
    assert caller.scalar("SELECT count(*) FROM outbox.pending WHERE job_id = ANY(:ids)", {"ids": ids}) == n


def test_enqueue_many_duplicate_keys_in_one_batch(caller: SyncCaller) -> None:
    tag = uuid.uuid4().hex
    existing = outbox.enqueue(caller.target, "sample.invoice", args=[0], idempotency_key=f"{tag}-old")
    ids = outbox.enqueue_many(caller.target, [
        outbox.job("sample.invoice", args=[1], idempotency_key=f"{tag}-a"),
        outbox.job("sample.invoice", args=[2], idempotency_key=f"{tag}-b"),
        outbox.job("sample.invoice", args=[3], idempotency_key=f"{tag}-a"),
        outbox.job("sample.invoice", args=[4]),
        outbox.job("sample.invoice", args=[5], idempotency_key=f"{tag}-old"),
        outbox.job("sample.invoice", args=[6], idempotency_key=f"{tag}-b"),
        outbox.job("sample.invoice", args=[7]),
    ])
    assert ids[0] == ids[2]
    assert ids[1] == ids[5]
    assert ids[4] == existing
    assert len({ids[0], ids[1], ids[3], ids[6], existing}) == 5
    rows = dict(caller.query("SELECT id, (payload->'args'->>0)::int FROM outbox.jobs WHERE id = ANY(:ids)",
                             {"ids": ids}))
    assert rows == {ids[0]: 1, ids[1]: 2, ids[3]: 4, ids[6]: 7, existing: 0}
    assert caller.scalar("SELECT count(*) FROM outbox.pending WHERE job_id = ANY(:ids)", {"ids": ids}) == 5


def test_enqueue_many_keeps_awkward_payloads_and_headers_exactly(db_url: str) -> None:
    """The array form sends payloads and headers as one JSON array each: every document comes back
    as it went in, whatever quotes, backslashes, brackets or characters it holds."""
    awkward = ['say "hi"', "back\\slash \\\"", "\u00fcn\u00efc\u00f6d\u00e9 \u2713 \U0001f680", '{"not": "an object"}',
               "comma, [bracket]}", "", "tab\tnewline\n"]
    with psycopg.connect(db_url) as conn:
        ids = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[doc], kwargs={"k": [doc, 1.5, None]},
                                                    headers={"h": doc}) for doc in awkward])
        got = {row[0]: row[1:] for row in conn.execute(
            "SELECT id, payload, headers FROM outbox.jobs WHERE id = ANY(%s)", (ids,)).fetchall()}
    for job_id, doc in zip(ids, awkward, strict=True):
        payload, headers = got[job_id]
        assert payload["args"] == [doc] and payload["kwargs"] == {"k": [doc, 1.5, None]}
        assert headers["h"] == doc


def test_enqueue_many_of_nothing(caller: SyncCaller) -> None:
    assert outbox.enqueue_many(caller.target, []) == []


# --------------------------------------------------------------------------- bad input: typed errors, usable tx

TIERLESS = Task(name="test_enqueue.tierless", fn=lambda: None, tier=None)


def _now() -> dt.datetime:
    return dt.datetime.now(UTC)


#: id -> (enqueue arguments, built at call time; expected error; expected field)
BAD_INPUTS: dict[str, tuple[Callable[[], dict[str, Any]], type[EnqueueError], str]] = {
    "unknown task name": (lambda: {"task": "sample.no_such_task"}, UnknownTaskError, "task"),
    "task not a name": (lambda: {"task": 123}, UnknownTaskError, "task"),
    "unknown tier": (lambda: {"tier": "urgentest"}, UnknownTierError, "tier"),
    "tier not a str": (lambda: {"tier": 3}, UnknownTierError, "tier"),
    "no tier at all": (lambda: {"task": TIERLESS}, UnknownTierError, "tier"),
    "args not encodable": (lambda: {"args": [object()]}, PayloadEncodeError, "args"),
    "args a str": (lambda: {"args": "abc"}, PayloadEncodeError, "args"),
    "args a dict": (lambda: {"args": {"a": 1}}, PayloadEncodeError, "args"),
    "args an int": (lambda: {"args": 5}, PayloadEncodeError, "args"),
    "kwargs not encodable": (lambda: {"kwargs": {"a": object()}}, PayloadEncodeError, "kwargs"),
    "kwargs non-str key": (lambda: {"kwargs": {1: "x"}}, PayloadEncodeError, "kwargs"),
    "kwargs not a dict": (lambda: {"kwargs": [("a", 1)]}, PayloadEncodeError, "kwargs"),
    "NUL in args": (lambda: {"args": ["a\x00b"]}, PayloadEncodeError, "args"),
    "NUL nested in args": (lambda: {"args": [{"k": ["\x00"]}]}, PayloadEncodeError, "args"),
    "NUL in kwargs": (lambda: {"kwargs": {"k": "\x00"}}, PayloadEncodeError, "kwargs"),
    "NUL in kwargs key": (lambda: {"kwargs": {"k\x00": 1}}, PayloadEncodeError, "kwargs"),
    "lone surrogate": (lambda: {"args": ["\ud800"]}, PayloadEncodeError, "args"),
    "delay and run_at": (lambda: {"delay": 5, "run_at": _now()}, InvalidScheduleError, "delay"),
    "naive run_at": (lambda: {"run_at": dt.datetime.now()}, InvalidScheduleError, "run_at"),
    "run_at not a datetime": (lambda: {"run_at": "2030-01-01T00:00:00Z"}, InvalidScheduleError, "run_at"),
    "naive expires": (lambda: {"expires": dt.datetime.now() + dt.timedelta(hours=1)},
                      InvalidScheduleError, "expires"),
    "negative delay": (lambda: {"delay": -1}, InvalidScheduleError, "delay"),
    "negative timedelta delay": (lambda: {"delay": dt.timedelta(seconds=-1)}, InvalidScheduleError, "delay"),
    "NaN delay": (lambda: {"delay": math.nan}, InvalidScheduleError, "delay"),
    "infinite delay": (lambda: {"delay": math.inf}, InvalidScheduleError, "delay"),
    "delay beyond timestamps": (lambda: {"delay": 1e300}, InvalidScheduleError, "delay"),
    "huge timedelta delay": (lambda: {"delay": dt.timedelta(days=999_999_999)}, InvalidScheduleError, "delay"),
    "bool delay": (lambda: {"delay": True}, InvalidScheduleError, "delay"),
    "str delay": (lambda: {"delay": "5"}, InvalidScheduleError, "delay"),
    "NaN expires": (lambda: {"expires": math.nan}, InvalidScheduleError, "expires"),
    "zero expires": (lambda: {"expires": 0}, InvalidScheduleError, "expires"),
    "expires beyond timestamps": (lambda: {"expires": 1e15}, InvalidScheduleError, "expires"),
    "expires before delay": (lambda: {"delay": 60, "expires": 30}, InvalidScheduleError, "expires"),
    "expires equal to delay": (lambda: {"delay": 60, "expires": dt.timedelta(seconds=60)},
                               InvalidScheduleError, "expires"),
    "expires at before delay": (lambda: {"delay": 600, "expires": _now() + dt.timedelta(seconds=60)},
                                InvalidScheduleError, "expires"),
    "expires at before run_at": (lambda: {"run_at": _now() + dt.timedelta(hours=1),
                                          "expires": _now() + dt.timedelta(minutes=30)},
                                 InvalidScheduleError, "expires"),
    "expires seconds before run_at": (lambda: {"run_at": _now() + dt.timedelta(hours=1), "expires": 60},
                                      InvalidScheduleError, "expires"),
    "expires in the past": (lambda: {"expires": _now() - dt.timedelta(seconds=1)}, InvalidScheduleError, "expires"),
    "priority too high": (lambda: {"priority": 256}, InvalidOptionError, "priority"),
    "priority negative": (lambda: {"priority": -1}, InvalidOptionError, "priority"),
    "priority bool": (lambda: {"priority": True}, InvalidOptionError, "priority"),
    "priority str": (lambda: {"priority": "5"}, InvalidOptionError, "priority"),
    "empty key": (lambda: {"idempotency_key": ""}, InvalidOptionError, "idempotency_key"),
    "key too long": (lambda: {"idempotency_key": "k" * 513}, InvalidOptionError, "idempotency_key"),
    "key not a str": (lambda: {"idempotency_key": 123}, InvalidOptionError, "idempotency_key"),
    "key with NUL": (lambda: {"idempotency_key": "a\x00b"}, InvalidOptionError, "idempotency_key"),
    "headers a list": (lambda: {"headers": ["a"]}, PayloadEncodeError, "headers"),
    "headers nested dict": (lambda: {"headers": {"a": {"b": 1}}}, PayloadEncodeError, "headers"),
    "headers nested list": (lambda: {"headers": {"a": [1]}}, PayloadEncodeError, "headers"),
    "headers None value": (lambda: {"headers": {"a": None}}, PayloadEncodeError, "headers"),
    "headers non-str key": (lambda: {"headers": {1: "a"}}, PayloadEncodeError, "headers"),
    "headers NUL value": (lambda: {"headers": {"a": "x\x00"}}, PayloadEncodeError, "headers"),
    "max_retries negative": (lambda: {"max_retries": -1}, InvalidOptionError, "max_retries"),
    "max_retries bool": (lambda: {"max_retries": True}, InvalidOptionError, "max_retries"),
    "max_retries beyond int4": (lambda: {"max_retries": 2**31}, InvalidOptionError, "max_retries"),
    "misspelt option": (lambda: {"idempotencykey": "k1"}, InvalidOptionError, "idempotencykey"),
}


def _count_all(c: SyncCaller) -> tuple[int, int]:
    row = c.query("SELECT (SELECT count(*) FROM outbox.jobs), (SELECT count(*) FROM outbox.pending)")[0]
    return int(row[0]), int(row[1])


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_typed_error_and_keeps_the_transaction_usable(case: str, caller: SyncCaller) -> None:
    build, error, field = BAD_INPUTS[case]
    before_id = outbox.enqueue(caller.target, "sample.invoice", args=[1])  # work already in the transaction
    before = _count_all(caller)
    call: dict[str, Any] = {"task": "sample.invoice", "args": [1], **build()}
    task = call.pop("task")

    with pytest.raises(error) as info:
        outbox.enqueue(caller.target, task, **call)
    assert type(info.value) is error
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")
    with pytest.raises(error):  # the same refusal from job(), used by enqueue_many
        outbox.job(task, **call)

    assert caller.query("SELECT 1") == [(1,)]
    assert _count_all(caller) == before  # nothing written
    after_id = outbox.enqueue(caller.target, "sample.invoice", args=[2])
    assert _count_all(caller) == (before[0] + 1, before[1] + 1)
    assert caller.scalar("SELECT count(*) FROM outbox.jobs WHERE id IN (:a, :b)",
                         {"a": before_id, "b": after_id}) == 2


async def test_bad_input_async_keeps_the_transaction_usable(acaller: AsyncCaller) -> None:
    for case, (build, error, field) in BAD_INPUTS.items():
        call: dict[str, Any] = {"task": "sample.invoice", "args": [1], **build()}
        task = call.pop("task")
        with pytest.raises(error) as info:
            await outbox.enqueue_async(acaller.target, task, **call)
        assert info.value.field == field, case
    assert await acaller.query("SELECT 1") == [(1,)]
    job_id = await outbox.enqueue_async(acaller.target, "sample.invoice", args=[2])
    assert await acaller.scalar("SELECT count(*) FROM outbox.jobs WHERE id = :id", {"id": job_id}) == 1


@pytest.fixture
def restore_options() -> Iterator[None]:
    saved = enqueue_module._options
    try:
        yield
    finally:
        enqueue_module._options = saved


def test_payload_limit_is_inclusive_and_configurable(caller: SyncCaller, restore_options: None) -> None:
    args = ["x" * 100]
    size = len(encode_payload(args, {}, 10**9).encode())
    outbox.configure(max_payload_bytes=size)
    assert enqueue_module._options.max_payload_bytes == size
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=args)  # exactly at the limit
    assert job_row(caller, job_id)["payload"] == {"args": args, "kwargs": {}}

    outbox.configure(max_payload_bytes=size - 1)
    with pytest.raises(PayloadTooLargeError) as info:
        outbox.enqueue(caller.target, "sample.invoice", args=args)
    assert info.value.field == "args"
    with pytest.raises(PayloadTooLargeError):
        outbox.enqueue(caller.target, "sample.invoice", kwargs={"blob": "x" * 100})
    assert caller.query("SELECT 1") == [(1,)]
    outbox.enqueue(caller.target, "sample.invoice", args=["small"])


def test_configure_rejects_a_non_positive_limit(restore_options: None) -> None:
    for bad in (0, -1):
        with pytest.raises(outbox.ConfigError) as info:
            outbox.configure(max_payload_bytes=bad)
        assert info.value.field == "max_payload_bytes"
    assert enqueue_module._options.max_payload_bytes == outbox.Settings().max_payload_bytes


def test_configure_with_an_own_registry(caller: SyncCaller, restore_options: None) -> None:
    own = Registry()  # empty when configured: still the one enqueue must use
    outbox.configure(registry_=own)
    outbox.task(name="own.only", tier="low", registry_=own)(lambda: None)
    job_id = outbox.enqueue(caller.target, "own.only")
    assert job_row(caller, job_id)["tier"] == "low"
    with pytest.raises(UnknownTaskError):  # the global registry is not consulted
        outbox.enqueue(caller.target, "sample.invoice", args=[1])


def test_strings_that_only_look_like_nul_are_kept(caller: SyncCaller) -> None:
    args = [r"C:\u0000", "\\", "\\\\u0000"]
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=args, kwargs={r"k\u0000": r"\u0000"},
                            headers={"path": r"C:\u0000"})
    job = job_row(caller, job_id)
    assert job["payload"] == {"args": args, "kwargs": {r"k\u0000": r"\u0000"}}
    assert job["headers"] == {"path": r"C:\u0000"}


# --------------------------------------------------------------------------- tier, priority, retries


def test_explicit_tier_overrides_and_is_logged(caller: SyncCaller, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="tierbox.enqueue"):
        job_id = outbox.enqueue(caller.target, "sample.invoice", Tier.CRITICAL, args=[1])
        by_name = outbox.enqueue(caller.target, "sample.invoice", "HIGH", args=[2])
        own = outbox.enqueue(caller.target, "sample.invoice", "normal", args=[3])
    job = job_row(caller, job_id)
    assert (job["tier"], job["priority"]) == ("critical", 10)
    assert pending_row(caller, job_id)["tier"] == "critical"
    assert pending_row(caller, job_id)["weight"] == 10
    assert job_row(caller, by_name)["tier"] == "high"
    assert pending_row(caller, by_name)["weight"] == 8
    assert job_row(caller, own)["tier"] == "normal"

    overrides = [r.getMessage() for r in caplog.records if "enqueue.tier_override" in r.getMessage()]
    assert len(overrides) == 2, overrides
    assert f"job_id={job_id}" in overrides[0] and "tier=critical" in overrides[0]
    assert "task=sample.invoice" in overrides[0]
    assert f"job_id={by_name}" in overrides[1] and "tier=high" in overrides[1]


def test_priority_defaults_clamps_and_overrides(caller: SyncCaller) -> None:
    def prio(job_id: uuid.UUID) -> tuple[int, int]:
        return job_row(caller, job_id)["priority"], pending_row(caller, job_id)["priority"]

    assert prio(outbox.enqueue(caller.target, "sample.call_recording", args=[1])) == (9, 9)  # the task's own
    assert prio(outbox.enqueue(caller.target, "sample.call_summary", args=[1])) == (3, 3)
    assert prio(outbox.enqueue(caller.target, "sample.call_summary", args=[1], priority=7)) == (7, 7)
    assert prio(outbox.enqueue(caller.target, "sample.otp", args=["1"], priority=200)) == (10, 10)  # x-max-priority
    assert prio(outbox.enqueue(caller.target, "sample.invoice", args=[1], priority=200)) == (200, 200)  # quorum
    assert prio(outbox.enqueue(caller.target, "sample.invoice", args=[1], priority=0)) == (0, 0)
    assert prio(outbox.enqueue(caller.target, "sample.export", args=[1])) == (1, 1)  # bulk's weight


def test_max_retries_default_and_override(caller: SyncCaller) -> None:
    assert job_row(caller, outbox.enqueue(caller.target, "sample.flaky"))["max_retries"] == 2
    assert job_row(caller, outbox.enqueue(caller.target, "sample.flaky", max_retries=0))["max_retries"] == 0
    assert job_row(caller, outbox.enqueue(caller.target, sample_tasks.invoice, args=[1]))["max_retries"] == 3


# --------------------------------------------------------------------------- schedule and expiry

TOLERANCE_S = 0.001


def _offsets(c: SyncCaller, job_id: uuid.UUID) -> tuple[float, float | None, float]:
    """available_at - now(), expires_at - now(), pending.available_at - jobs.available_at (seconds).

    now() is the transaction's start time, the same value enqueue's SQL used.
    """
    row = c.query(
        "SELECT EXTRACT(EPOCH FROM j.available_at - now())::float8, EXTRACT(EPOCH FROM j.expires_at - now())::float8,"
        " EXTRACT(EPOCH FROM p.available_at - j.available_at)::float8"
        " FROM outbox.jobs j JOIN outbox.pending p ON p.job_id = j.id WHERE j.id = :id", {"id": job_id})[0]
    return row[0], row[1], row[2]


def test_immediate_job_is_due_now(caller: SyncCaller) -> None:
    due, expires, pend = _offsets(caller, outbox.enqueue(caller.target, "sample.invoice", args=[1]))
    assert abs(due) < TOLERANCE_S and expires is None and pend == 0


@pytest.mark.parametrize("delay", [30, 30.5, dt.timedelta(minutes=2), 0])
def test_delay_sets_available_at(caller: SyncCaller, delay: float | dt.timedelta) -> None:
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else float(delay)
    due, expires, pend = _offsets(caller, outbox.enqueue(caller.target, "sample.invoice", args=[1], delay=delay))
    assert abs(due - seconds) < TOLERANCE_S
    assert expires is None and pend == 0


def test_run_at_sets_available_at_exactly(caller: SyncCaller) -> None:
    run_at = dt.datetime(2031, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=[1], run_at=run_at)
    assert job_row(caller, job_id)["available_at"] == run_at
    assert pending_row(caller, job_id)["available_at"] == run_at
    past = _now() - dt.timedelta(hours=1)  # already due: fine, published at once
    assert job_row(caller, outbox.enqueue(caller.target, "sample.invoice", args=[1], run_at=past))["available_at"] \
        == past


@pytest.mark.parametrize(("kw", "due_s", "expires_s"), [
    ({"expires": 60}, 0.0, 60.0),
    ({"expires": dt.timedelta(hours=1)}, 0.0, 3600.0),
    ({"delay": 10, "expires": 60}, 10.0, 60.0),  # expires counts from now, not from the due time
    ({"delay": dt.timedelta(seconds=10), "expires": 10.5}, 10.0, 10.5),
])
def test_expires_relative(caller: SyncCaller, kw: dict[str, Any], due_s: float, expires_s: float) -> None:
    due, expires, _ = _offsets(caller, outbox.enqueue(caller.target, "sample.invoice", args=[1], **kw))
    assert abs(due - due_s) < TOLERANCE_S
    assert expires is not None and abs(expires - expires_s) < TOLERANCE_S


def test_expires_absolute(caller: SyncCaller) -> None:
    at = _now() + dt.timedelta(hours=2)
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=[1], expires=at)
    assert job_row(caller, job_id)["expires_at"] == at
    run_at = _now() + dt.timedelta(hours=1)
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=[1], run_at=run_at, expires=at)
    job = job_row(caller, job_id)
    assert (job["available_at"], job["expires_at"]) == (run_at, at)
    job_id = outbox.enqueue(caller.target, "sample.invoice", args=[1], run_at=run_at, expires=7200)
    _, expires, _ = _offsets(caller, job_id)
    assert expires is not None and abs(expires - 7200) < TOLERANCE_S


def test_task_default_expiry(caller: SyncCaller) -> None:
    t = Task(name="sample.invoice", fn=sample_tasks.invoice.fn, tier="normal", expires_s=120.0)
    _, expires, _ = _offsets(caller, outbox.enqueue(caller.target, t, args=[1]))
    assert expires is not None and abs(expires - 120) < TOLERANCE_S
    _, expires, _ = _offsets(caller, outbox.enqueue(caller.target, t, args=[1], expires=30))  # the call wins
    assert expires is not None and abs(expires - 30) < TOLERANCE_S


# --------------------------------------------------------------------------- one statement per shape


def test_single_row_and_array_forms_write_the_same_rows(db_url: str) -> None:
    """enqueue() uses a single-row statement, enqueue_many() the array one: same rows, override included."""
    from outbox._maintenance import sync_tiers
    from outbox.tiers import DEFAULT_TOPOLOGY

    with psycopg.connect(db_url) as conn:
        sync_tiers(conn, DEFAULT_TOPOLOGY)
        run_at = dt.datetime.now(UTC) + dt.timedelta(hours=1)
        kinds: list[dict[str, Any]] = [
            {},  # overridden: high, weight 8, priority capped at the override's weight
            {"tier": "low"},  # explicit tier: the override does not apply
            {"delay": 30, "expires": 90, "priority": 3},
            {"run_at": run_at, "expires": run_at + dt.timedelta(hours=1), "idempotency_key": "k", "max_retries": 2},
        ]
        cols = ("j.tier, j.priority, j.payload, j.headers, j.idempotency_key, j.max_retries, "
                "j.expires_at - j.available_at, j.available_at - j.enqueued_at > interval '10 seconds'")

        def rows(ids: list[uuid.UUID]) -> list[tuple[Any, ...]]:
            return [conn.execute(f"SELECT {cols}, p.tier, p.weight, p.priority FROM outbox.jobs j "
                                 "JOIN outbox.pending p ON p.job_id = j.id WHERE j.id = %s", (i,)).fetchone()
                    for i in ids]

        override = ("INSERT INTO outbox.tier_overrides (task, tier, expires_at, created_by, reason) "
                    "VALUES ('sample.invoice', 'high', now() + interval '1 hour', 'test', 'urgent today')")
        conn.execute(override)
        many = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[n], **kw) for n, kw in enumerate(kinds)])
        by_many = rows(many)
        conn.rollback()  # the same jobs again (same idempotency key) through the single-row form
        conn.execute(override)
        single = [outbox.enqueue(conn, "sample.invoice", args=[n], **kw) for n, kw in enumerate(kinds)]
        by_single = rows(single)
        assert by_single[0][0] == "high" and by_single[0][-2] == 8
        assert by_single[1][0] == "low"
        # expires_at - available_at comes from now() on both paths: compare to the second
        norm = [tuple(round(v.total_seconds()) if isinstance(v, dt.timedelta) else v for v in r) for r in by_single]
        assert norm == [tuple(round(v.total_seconds()) if isinstance(v, dt.timedelta) else v for v in r)
                        for r in by_many]
        again = outbox.enqueue(conn, "sample.invoice", args=[9], idempotency_key="k")
        assert again == single[3]
        conn.rollback()
