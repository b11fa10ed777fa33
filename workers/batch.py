"""Group commit for the ledger statements every delivery makes: starts and sessionless successes.

While one statement is in flight, the requests that arrive queue up and go in the next one: at low
load a batch is one request and costs what a lone statement costs; under load the worker makes one
statement (one commit, one fsync, one round trip) per batch instead of one per job. Each caller
still gets its own result (its own start decision, its own fence).

* :class:`StartBatcher`: ``outbox.start_attempt`` for several deliveries in one statement, job rows
  locked first in id order with SKIP LOCKED (as every multi-row statement: no deadlock cycle; and a
  row held elsewhere cannot stall the batch: that delivery is started alone, waiting as before).
  A failed statement fails its waiters with the error, and each delivery goes through the pool's
  infrastructure back-off, as a lone failed start would, and is started again with its own start
  token: if the failed statement had committed (its reply lost), the retry finds the lease with
  that token and resumes the attempt (migration 0006) instead of reporting a duplicate.
* :class:`SuccessBatcher`: ``SUCCEED`` for async handlers without ``ctx``, which have nothing to
  commit with their success. A failed flush is tried again (the statement is fenced, so a retry
  after a lost reply reports the attempt as fenced, never twice succeeded); if it keeps failing,
  every waiter gets :class:`OutcomeNotRecorded`, which is infrastructure trouble, not the handler's
  failure: the job is left to its lease, as if the worker had died (the reaper retries it).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, NamedTuple, TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox import _transitions as transitions
from tierbox.workers.ledger import Ledger, StartResult, autocommit

#: Most requests recorded by one statement.
MAX_BATCH = 256
#: Waits between tries of a failed success flush, seconds (then the waiters get OutcomeNotRecorded).
RETRY_BACKOFF_S = (0.05, 0.25, 1.0)

Request = TypeVar("Request")
Outcome = TypeVar("Outcome")


class StartRequest(NamedTuple):
    """One delivery's start in a batch: its job, whether it is acked early (long task), its start token."""

    job_id: uuid.UUID
    acked_early: bool
    token: uuid.UUID | None


class OutcomeNotRecorded(Exception):  # noqa: N818 - names the outcome, like AttemptTimeout
    """The handler finished but Postgres did not take its success; the lease will recover the job."""


class GroupCommit(Generic[Request, Outcome]):
    """Runs ``record(conn, requests)`` for every request that arrived while the previous call ran.

    ``record`` returns one outcome per request, in order. ``retry_backoff_s``: waits between tries
    of a failed call (empty: no retry). ``failure`` turns the last error (or the cancellation at
    shutdown) into what every waiter of the batch raises.
    """

    def __init__(self, engine: AsyncEngine,
                 record: Callable[[AsyncConnection, list[Request]], Awaitable[list[Outcome]]], *, name: str,
                 failure: Callable[[BaseException], BaseException], retry_backoff_s: tuple[float, ...] = ()) -> None:
        self.engine = engine
        self._record = record
        self._name = name
        self._failure = failure
        self._backoff = retry_backoff_s
        self._waiting: list[tuple[Request, asyncio.Future[Outcome]]] = []
        self._flusher: asyncio.Task[None] | None = None
        #: Outcomes whose waiter was cancelled before its statement returned (shutdown).
        self.orphaned: list[tuple[Request, Outcome]] = []
        #: Statements committed so far (batches), beside the requests they recorded.
        self.flushes = 0
        self.recorded = 0

    async def submit(self, request: Request) -> Outcome:
        """Queue ``request``; returns its outcome once the statement that carried it has committed."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, future))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush(), name=self._name)
        return await future

    async def _flush(self) -> None:
        while self._waiting:
            batch, self._waiting = self._waiting[:MAX_BATCH], self._waiting[MAX_BATCH:]
            try:
                outcomes = await self._try([request for request, _ in batch])
                paired = list(zip(batch, outcomes, strict=True))
            except asyncio.CancelledError as exc:  # shutdown: nobody may wait for an outcome that will not come
                _fail(batch + self._waiting, self._failure(exc))
                self._waiting = []
                raise
            except Exception as exc:  # noqa: BLE001 - every try failed: this batch's waiters learn it
                _fail(batch, self._failure(exc))
                continue
            for (request, future), outcome in paired:
                if future.done():  # its waiter was cancelled (shutdown): the caller must settle it
                    self.orphaned.append((request, outcome))
                else:
                    future.set_result(outcome)

    async def settle(self) -> list[tuple[Request, Outcome]]:
        """Wait for the statement in flight, if any; returns (and forgets) the orphaned outcomes."""
        if self._flusher is not None and not self._flusher.done():
            await asyncio.gather(self._flusher, return_exceptions=True)
        orphaned, self.orphaned = self.orphaned, []
        return orphaned

    async def _try(self, requests: list[Request]) -> list[Outcome]:
        for backoff in (*self._backoff, None):
            try:
                async with self.engine.connect() as conn:
                    outcomes = await self._record(conn, requests)
            except Exception:
                if backoff is None:
                    raise
                await asyncio.sleep(backoff)
                continue
            self.flushes += 1
            self.recorded += len(requests)
            return outcomes
        raise AssertionError("unreachable")  # the loop returns or raises


class StartBatcher:
    """``outbox.start_attempt`` for the deliveries of one worker (its :class:`Ledger`), batched."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.group: GroupCommit[StartRequest, StartResult] = GroupCommit(
            ledger.engine, self._record, name="tierbox-start-batch", failure=_as_is)
        #: Starts that found their job row held elsewhere and were started alone (waiting for the row).
        self.busy = 0

    async def start(self, job_id: uuid.UUID, acked_early: bool, token: uuid.UUID | None = None) -> StartResult:
        """Count the attempt and take the lease (committed when this returns), or learn why not.

        ``token``: the delivery's start token (see :meth:`Ledger.start`).
        """
        result = await self.group.submit(StartRequest(job_id, acked_early, token))
        if result.decision != "busy":
            return result
        # Its job row is held elsewhere (or is not in the ledger): start it alone, waiting for the
        # row as a lone start always did, without holding up the deliveries batched with it.
        self.busy += 1
        return await self.ledger.start(job_id, acked_early, token=token)

    async def orphans(self) -> list[tuple[uuid.UUID, StartResult]]:
        """Starts committed for deliveries whose slot was cancelled meanwhile (shutdown): job id, result."""
        return [(request.job_id, result) for request, result in await self.group.settle()]

    async def _record(self, conn: AsyncConnection, requests: list[StartRequest]) -> list[StartResult]:
        # No sorting here: START_MANY itself locks the batch's job rows in id order.
        rows = await autocommit(conn, transitions.START_MANY, {
            "job_ids": [r.job_id for r in requests], "acked_early": [r.acked_early for r in requests],
            "tokens": [r.token for r in requests], "worker_id": self.ledger.worker_id, "lease_s": self.ledger.lease_s})
        results: list[Any] = [None] * len(requests)
        for row in rows:
            results[row.n - 1] = StartResult.of(row)
        return results


class SuccessBatcher:
    """Records sessionless successes in batches; :meth:`succeed` returns False when fenced out."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.group: GroupCommit[tuple[uuid.UUID, int], bool] = GroupCommit(
            engine, _succeed_many, name="tierbox-success-batch", failure=_not_recorded,
            retry_backoff_s=RETRY_BACKOFF_S)

    async def succeed(self, job_id: uuid.UUID, attempt: int) -> bool:
        """Mark ``attempt`` of ``job_id`` succeeded (committed when this returns); False if fenced.

        Raises :class:`OutcomeNotRecorded` when Postgres kept refusing the statement.
        """
        return await self.group.submit((job_id, attempt))


async def _succeed_many(conn: AsyncConnection, requests: list[tuple[uuid.UUID, int]]) -> list[bool]:
    rows = await autocommit(conn, transitions.SUCCEED_MANY, {"job_ids": [job_id for job_id, _ in requests],
                                                         "attempts": [attempt for _, attempt in requests]})
    done = {(r.job_id, r.attempt) for r in rows}
    return [request in done for request in requests]


def _as_is(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncio.CancelledError):
        return ConnectionAbortedError("worker stopping: the attempt was not started")
    return exc


def _not_recorded(exc: BaseException) -> BaseException:
    if isinstance(exc, asyncio.CancelledError):
        return OutcomeNotRecorded("worker stopping: success not recorded")
    return OutcomeNotRecorded(f"{type(exc).__name__}: {exc}")


def _fail(batch: list[tuple[Any, asyncio.Future[Any]]], exc: BaseException) -> None:
    for _, future in batch:
        if not future.done():
            future.set_exception(exc)
