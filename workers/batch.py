"""Group commit for sessionless successes: one statement for the attempts that finish together.

An async handler without ``ctx`` has nothing to commit with its success, so its ``SUCCEED`` can
share a statement (and a commit, and its fsync) with the others that finished meanwhile: while
one flush is in flight, finishing attempts queue up and go in the next. At low load a batch is
one attempt and costs what a lone ``SUCCEED`` costs; under load the per-job statement count
falls towards one (``start_attempt``). Each caller still learns its own fenced result.

A flush that fails is tried again (the statement is fenced, so a retry after a commit whose reply
was lost reports the attempt as fenced, never twice succeeded); if it keeps failing, every waiter
gets :class:`OutcomeNotRecorded`, which is infrastructure trouble, not the handler's failure: the
job is left to its lease, as if the worker had died (the reaper retries it).
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import queries
from workers.ledger import autocommit

#: Most attempts recorded by one statement.
MAX_BATCH = 256
#: Waits between tries of a failed flush, seconds (then the waiters get OutcomeNotRecorded).
RETRY_BACKOFF_S = (0.05, 0.25, 1.0)

Waiter = tuple[uuid.UUID, int, "asyncio.Future[bool]"]


class OutcomeNotRecorded(Exception):  # noqa: N818 - names the outcome, like AttemptTimeout
    """The handler finished but Postgres did not take its success; the lease will recover the job."""


class SuccessBatcher:
    """Records sessionless successes in batches; :meth:`succeed` returns False when fenced out."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._waiting: list[Waiter] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Statements committed so far (batches), beside the attempts they recorded.
        self.flushes = 0
        self.recorded = 0

    async def succeed(self, job_id: uuid.UUID, attempt: int) -> bool:
        """Mark ``attempt`` of ``job_id`` succeeded (committed when this returns); False if fenced.

        Raises :class:`OutcomeNotRecorded` when Postgres kept refusing the statement.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, attempt, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="tierbox-success-batch")
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                done = await self._record(batch)
            except asyncio.CancelledError:  # shutdown: nobody may wait for an outcome that will not come
                _fail(batch + self._waiting, OutcomeNotRecorded("worker stopping: success not recorded"))
                self._waiting = []
                raise
            except Exception as exc:  # noqa: BLE001 - every try failed: this batch's waiters learn it
                _fail(batch, OutcomeNotRecorded(f"{type(exc).__name__}: {exc}"))
                continue
            for job_id, attempt, future in batch:
                if not future.done():  # a waiter cancelled at shutdown is left alone
                    future.set_result((job_id, attempt) in done)

    async def _record(self, batch: list[Waiter]) -> set[tuple[uuid.UUID, int]]:
        params = {"job_ids": [job_id for job_id, _, _ in batch], "attempts": [a for _, a, _ in batch]}
        for backoff in (*RETRY_BACKOFF_S, None):
            try:
                async with self.engine.connect() as conn:
                    rows = await autocommit(conn, queries.SUCCEED_MANY, params)
            except Exception:
                if backoff is None:
                    raise
                await asyncio.sleep(backoff)
                continue
            self.flushes += 1
            self.recorded += len(batch)
            return {(r[0], r[1]) for r in rows}
        raise AssertionError("unreachable")  # the loop returns or raises


def _fail(batch: list[Waiter], exc: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)
