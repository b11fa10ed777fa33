"""Running one attempt of a handler, with its time limit and its transaction.

Every attempt runs inside a database transaction that also marks the job
succeeded (the ``SUCCEED`` statement, fenced on the attempt number): the
handler's writes through ``ctx.session`` and the success commit together or
not at all.

What a timeout can interrupt:

* ``async def`` handlers are cancelled at the limit (``CancelledError`` is
  raised at their next ``await``); their transaction rolls back.
* ``def`` handlers run in the pool's thread pool and cannot be interrupted
  from outside: at the limit the attempt is recorded as ``timeout`` and the
  thread is abandoned. It keeps its slot in the thread pool until it returns,
  and when it does, its transaction is rolled back (the flag below, and the
  fence, see to that), so a late finish changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import enum
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.orm import Session

from outbox import _queries as queries
from outbox import _tracing as tracing
from outbox import _transitions as transitions
from outbox._encoding import Payload
from outbox._progress import EngineProgress
from outbox._sql import run, run_async
from outbox.context import TaskContext
from outbox.registry import Task
from outbox.webhooks import result_params
from tierbox.workers.batch import SuccessBatcher


class Result(enum.Enum):
    """How an attempt ended, when it did not raise."""

    SUCCEEDED = "succeeded"
    FENCED = "fenced"  # the ledger moved on (reaped, redriven): nothing was committed
    ABANDONED = "abandoned"  # a sync handler finished after its timeout: rolled back


@dataclass(frozen=True, slots=True)
class Returned:
    """An async handler without ``ctx`` returned ``value``; its success is not recorded yet
    (:meth:`Executor.succeed` records it)."""

    value: Any


class AttemptTimeout(Exception):  # noqa: N818 - reads as the outcome it records
    """The attempt exceeded the task's ``timeout_s``."""


class Executor:
    """Runs attempts on the event loop (async handlers) or in a bounded thread pool (sync)."""

    def __init__(self, async_engine: AsyncEngine, sync_engine: Engine, threads: int,
                 ledger_engine: AsyncEngine | None = None) -> None:
        self.async_engine = async_engine
        self.sync_engine = sync_engine
        self.threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="tierbox-handler")
        #: Sessionless successes go on the ledger engine (the pool's: generic plans), else on ``async_engine``.
        self.successes = SuccessBatcher(ledger_engine or async_engine)
        #: Spans are recorded: a sync handler's thread runs in a copy of the attempt's context.
        self.traced = tracing.enabled()

    async def run(self, task: Task, payload: Payload, ctx: TaskContext, conn: AsyncConnection | None = None) -> Result:
        """Run one attempt and record its success; raises the handler's exception or :class:`AttemptTimeout`.

        ``conn``: for async handlers that take ``ctx``, a checked-out connection not in a
        transaction to open the attempt's transaction on (default: one from the engine's pool).
        """
        done = await self.attempt(task, payload, ctx, conn)
        if isinstance(done, Returned):
            return await self.succeed(task, ctx.job_id, ctx.attempt, done.value)
        return done

    async def attempt(self, task: Task, payload: Payload, ctx: TaskContext,
                      conn: AsyncConnection | None = None) -> Result | Returned:
        """Run one attempt as :meth:`run` does, except that an async handler without ``ctx`` returns
        :class:`Returned`: its success is recorded by :meth:`succeed`, later (the pool's finishing stage)."""
        if not task.is_async:
            return await self._run_sync(task, payload, ctx)
        if not task.takes_context:  # no session to open: no connection held while the handler runs
            return Returned(await _call_in_time(task, payload, ctx))
        if conn is None:
            async with self.async_engine.connect() as own:
                return await self._run_async(task, payload, ctx, own)
        return await self._run_async(task, payload, ctx, conn)

    async def _run_async(self, task: Task, payload: Payload, ctx: TaskContext, conn: AsyncConnection) -> Result:
        # The session owns the transaction it begins on ``conn`` (commit/rollback are real).
        session = AsyncSession(bind=conn)
        ctx.session = session
        try:
            value = await _call_in_time(task, payload, ctx)
            if task.webhook_result:  # sent in its completion webhook (docs/webhooks.md)
                await run_async(session, queries.RECORD_RESULT, result_params(ctx.job_id, value))
            rows = await run_async(session, transitions.SUCCEED, {"job_id": ctx.job_id, "attempt": ctx.attempt})
            if rows[0].jobs != 1:
                await session.rollback()
                return Result.FENCED
            await session.commit()
            return Result.SUCCEEDED
        finally:
            # Roll back whatever is open. A connection left unusable (e.g. a query cancelled at the
            # time limit) is discarded rather than reused, and the original error propagates.
            try:
                await session.close()
            except Exception:  # noqa: BLE001
                with contextlib.suppress(Exception):
                    await conn.invalidate()

    async def succeed(self, task: Task, job_id: uuid.UUID, attempt: int, value: Any) -> Result:
        """Record the success of an async handler without ``ctx`` that returned ``value``.

        Such a handler cannot write through the attempt's session, so there is nothing for the
        success to commit with: it is recorded autocommitted, batched with the others that finish
        meanwhile (workers.batch), instead of BEGIN + SUCCEED + COMMIT and an AsyncSession.
        Raises :class:`OutcomeNotRecorded` when Postgres keeps refusing it.
        """
        if task.webhook_result:  # no session to commit with: its own short transaction, before the success
            async with self.async_engine.begin() as conn:
                await run_async(conn, queries.RECORD_RESULT, result_params(job_id, value))
        return Result.SUCCEEDED if await self.successes.succeed(job_id, attempt) else Result.FENCED

    async def _run_sync(self, task: Task, payload: Payload, ctx: TaskContext) -> Result:
        abandoned = threading.Event()
        loop = asyncio.get_running_loop()
        if self.traced:
            # run_in_executor does not carry contextvars into the thread: without the copy, the
            # handler's spans would not nest under the process span.
            future = loop.run_in_executor(self.threads, contextvars.copy_context().run, _sync_attempt,
                                          self.sync_engine, task, payload, ctx, abandoned)
        else:
            future = loop.run_in_executor(self.threads, _sync_attempt, self.sync_engine, task, payload, ctx, abandoned)
        try:
            return await asyncio.wait_for(asyncio.shield(future), task.timeout_s)
        except TimeoutError as exc:
            abandoned.set()
            raise AttemptTimeout(
                f"{task.name} exceeded its timeout of {task.timeout_s}s (sync handler abandoned, still running)"
            ) from exc
        except asyncio.CancelledError:
            abandoned.set()
            raise

    def shutdown(self) -> None:
        """Stop accepting work; running threads are not waited for."""
        self.threads.shutdown(wait=False, cancel_futures=True)


def _sync_attempt(engine: Engine, task: Task, payload: Payload, ctx: TaskContext,
                  abandoned: threading.Event) -> Result:
    with Session(engine) as session:
        ctx.session = session
        value = _call_sync(task, payload, ctx)
        if task.webhook_result:  # sent in its completion webhook (docs/webhooks.md)
            run(session, queries.RECORD_RESULT, result_params(ctx.job_id, value))
        if abandoned.is_set():
            session.rollback()
            return Result.ABANDONED
        rows = run(session, transitions.SUCCEED, {"job_id": ctx.job_id, "attempt": ctx.attempt})
        if rows[0].jobs != 1:
            session.rollback()
            return Result.FENCED
        session.commit()
        return Result.SUCCEEDED


async def _call_in_time(task: Task, payload: Payload, ctx: TaskContext) -> Any:
    """Await an async handler, cancelled at the task's time limit (raised as AttemptTimeout); its return value."""
    try:
        return await asyncio.wait_for(_call(task, payload, ctx), task.timeout_s)
    except TimeoutError as exc:
        raise AttemptTimeout(f"{task.name} exceeded its timeout of {task.timeout_s}s") from exc
    finally:  # the handler's last progress is written before its outcome (outbox._progress)
        if isinstance(ctx.progress_writer, EngineProgress):
            await ctx.progress_writer.flush()


async def _call(task: Task, payload: Payload, ctx: TaskContext) -> Any:
    args, kwargs = task.arguments(payload.args, payload.kwargs, ctx)
    return await task.fn(*args, **kwargs)


def _call_sync(task: Task, payload: Payload, ctx: TaskContext) -> Any:
    args, kwargs = task.arguments(payload.args, payload.kwargs, ctx)
    try:
        return task.fn(*args, **kwargs)
    finally:  # the handler's last progress is written before its outcome (outbox._progress)
        if isinstance(ctx.progress_writer, EngineProgress):
            ctx.progress_writer.flush_sync()
