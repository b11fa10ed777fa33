"""Group commit for sessionless successes: one statement for the attempts that finish together.

An async handler without ``ctx`` has nothing to commit with its success, so its ``SUCCEED`` can
share a statement (and a commit, and its fsync) with the others that finished meanwhile: while
one flush is in flight, finishing attempts queue up and go in the next. At low load a batch is
one attempt and costs what a lone ``SUCCEED`` costs; under load the per-job statement count
falls towards one (``start_attempt``). Each caller still learns its own fenced result.
"""

from __future__ import annotations

import asyncio
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import queries
from workers.ledger import autocommit

#: Most attempts recorded by one statement.
MAX_BATCH = 256


class SuccessBatcher:
    """Records sessionless successes in batches; :meth:`succeed` returns False when fenced out."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self._waiting: list[tuple[uuid.UUID, int, asyncio.Future[bool]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Statements sent so far (batches), beside the attempts they recorded.
        self.flushes = 0
        self.recorded = 0

    async def succeed(self, job_id: uuid.UUID, attempt: int) -> bool:
        """Mark ``attempt`` of ``job_id`` succeeded (committed when this returns); False if fenced."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((job_id, attempt, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name="tierbox-success-batch")
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                async with self.engine.connect() as conn:
                    rows = await autocommit(conn, queries.SUCCEED_MANY, {
                        "job_ids": [job_id for job_id, _, _ in batch], "attempts": [a for _, a, _ in batch]})
            except Exception as exc:  # noqa: BLE001 - this batch's waiters get the error; the next batch goes on
                _fail(batch, exc)
                continue
            except BaseException:  # cancelled (shutdown): nobody may wait for an outcome that will not come
                batch, self._waiting = batch + self._waiting, []
                _fail(batch, ConnectionError("worker stopping: success not recorded"))
                raise
            self.flushes += 1
            self.recorded += len(batch)
            done = {r[0] for r in rows}
            for job_id, _, future in batch:
                if not future.done():  # a waiter cancelled at shutdown is left alone
                    future.set_result(job_id in done)


def _fail(batch: list[tuple[uuid.UUID, int, asyncio.Future[bool]]], exc: Exception) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(exc)
