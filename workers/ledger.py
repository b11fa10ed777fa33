"""The worker's side of the Postgres ledger: each method is one statement, committed on its own.

Every ledger statement is a single SQL statement (a CTE or a SQL function), so
it runs in autocommit mode: Postgres wraps it in an implicit transaction that
is committed before the result reaches us. That is as atomic and as durable as
``BEGIN; stmt; COMMIT`` but costs one round trip instead of three. Methods take
an optional ``conn`` (a checked-out ``AsyncConnection`` not in a transaction):
the delivery path runs ``start_attempt`` on the connection it then uses for the
handler's transaction, so one pool checkout serves the whole attempt.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Any, TypeVar

import msgspec
import psycopg
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox import _transitions as transitions
from outbox._failure import ErrorInfo
from outbox._sql import Statement, run_async
from outbox._worker_rows import Reaped, StartManyRow, StartRow
from tierbox.workers import queries

#: Bytes of an unrunnable message's body kept in dead_letters.raw_body (the size is always recorded).
MAX_RAW_BODY_BYTES = 64 * 1024


def dead_message_params(*, tier: str, reason: str, error: ErrorInfo, raw_body: bytes | None, headers: dict[str, Any],
                        job_id: uuid.UUID | None = None, task: str | None = None, payload: bytes | None = None,
                        priority: int | None = None) -> dict[str, Any]:
    """``DEAD_MESSAGE``'s parameters for an unrunnable message: its body cut to :data:`MAX_RAW_BODY_BYTES`.

    A function of its own so that tests (``tests/factories.py``) record such a dead letter exactly as
    :meth:`Ledger.dead_message` does, inside their own transaction.
    """
    if raw_body is not None and len(raw_body) > MAX_RAW_BODY_BYTES:
        headers = {**headers, "body_bytes": len(raw_body), "body_truncated": True}
        raw_body = raw_body[:MAX_RAW_BODY_BYTES]
    return {
        "job_id": job_id, "task": task, "tier": tier, "priority": priority,
        "payload": payload.decode() if payload else None, "headers": msgspec.json.encode(headers).decode(),
        "raw_body": raw_body, "reason": reason, **error.params(),
    }

R = TypeVar("R", bound=tuple[Any, ...])


class StartResult(msgspec.Struct, frozen=True):
    """What ``outbox.start_attempt`` decided for a delivery."""

    decision: str
    attempt: int
    max_retries: int
    enqueued_at: dt.datetime | None
    headers: dict[str, Any]

    @classmethod
    def of(cls, row: StartRow | StartManyRow) -> StartResult:
        """From a row of ``START_ATTEMPT`` or ``START_MANY`` (no headers: an empty dict)."""
        return cls(row.decision, row.attempt, row.max_retries, row.enqueued_at, row.headers or {})


async def autocommit(conn: AsyncConnection, stmt: Statement[R], params: dict[str, Any]) -> list[R]:
    """Run one statement on a checked-out connection not in a transaction, committed when it returns.

    It goes straight to the psycopg connection in autocommit mode (prepared, one round trip, no
    SQLAlchemy execution machinery: measured as most of the worker's CPU per job), and leaves the
    connection as it found it: SQLAlchemy never sees a transaction, the driver is back in
    transactional mode for the next user.
    """
    if conn.in_transaction():
        raise RuntimeError("ledger statements must not run inside a caller's transaction")
    driver: psycopg.AsyncConnection[Any] = (await conn.get_raw_connection()).driver_connection  # type: ignore[assignment]
    try:
        await driver.set_autocommit(True)
        try:
            return await run_async(driver, stmt, params)
        finally:
            if not (driver.closed or driver.broken):
                await driver.set_autocommit(False)
    except psycopg.Error:
        if driver.closed or driver.broken:  # tell the pool, which did not see the error, to drop it
            with contextlib.suppress(Exception):
                await conn.invalidate()
        raise


class Ledger:
    """Ledger operations of one worker process."""

    def __init__(self, engine: AsyncEngine, worker_id: str, lease_s: float) -> None:
        self.engine = engine
        self.worker_id = worker_id
        self.lease_s = lease_s

    async def _one(self, stmt: Statement[R], params: dict[str, Any], conn: AsyncConnection | None = None) -> list[R]:
        """Run one statement, committed when it returns (autocommit: one round trip)."""
        if conn is None:
            async with self.engine.connect() as own:
                return await autocommit(own, stmt, params)
        return await autocommit(conn, stmt, params)

    async def start(self, job_id: uuid.UUID, acked_early: bool, conn: AsyncConnection | None = None,
                    token: uuid.UUID | None = None) -> StartResult:
        """Count the attempt and take the lease, or learn why the delivery must not run.

        The attempt is committed when this returns (before any handler runs). ``token`` names the
        delivery (one per delivery, kept across its retries): asking again with the same token after
        a lost reply resumes the attempt that start committed instead of reporting it ``running``.
        """
        rows = await self._one(transitions.START_ATTEMPT, {"job_id": job_id, "worker_id": self.worker_id,
                                                       "lease_s": self.lease_s, "acked_early": acked_early,
                                                       "token": token}, conn)
        return StartResult.of(rows[0])

    async def retry(self, job_id: uuid.UUID, attempt: int, delay_s: float, outcome: str, error: ErrorInfo) -> bool:
        """Schedule the next attempt through the outbox; False if fenced out."""
        rows = await self._one(transitions.RETRY, {"job_id": job_id, "attempt": attempt, "delay_s": delay_s,
                                               "outcome": outcome, **error.params()})
        return bool(rows[0].jobs)

    async def dead(self, job_id: uuid.UUID, attempt: int, reason: str, outcome: str, error: ErrorInfo) -> bool:
        """Dead-letter after the final attempt; False if fenced out."""
        rows = await self._one(transitions.DEAD, {"job_id": job_id, "attempt": attempt, "reason": reason,
                                              "outcome": outcome, **error.params()})
        return bool(rows[0].jobs)

    async def dead_without_attempt(self, job_id: uuid.UUID, reason: str, error: ErrorInfo) -> bool:
        """Dead-letter a job that will not run (e.g. the broker dead-lettered it)."""
        rows = await self._one(transitions.DEAD_WITHOUT_ATTEMPT, {"job_id": job_id, "reason": reason,
                                                              **error.params()})
        return bool(rows[0].jobs)

    async def dead_message(self, *, tier: str, reason: str, error: ErrorInfo, raw_body: bytes | None,
                           headers: dict[str, Any], job_id: uuid.UUID | None = None, task: str | None = None,
                           payload: bytes | None = None, priority: int | None = None) -> None:
        """Record a message that names no job we can run, keeping (the head of) its body."""
        await self._one(transitions.DEAD_MESSAGE, dead_message_params(
            tier=tier, reason=reason, error=error, raw_body=raw_body, headers=headers, job_id=job_id, task=task,
            payload=payload, priority=priority))

    async def defer(self, job_id: uuid.UUID, delay_s: float, conn: AsyncConnection | None = None) -> bool:
        """Put a job back through the outbox, due in ``delay_s``, consuming no attempt; False if left alone."""
        return bool(await self._one(transitions.DEFER, {"job_id": job_id, "delay_s": delay_s}, conn))

    async def job_exists(self, job_id: uuid.UUID) -> bool:
        """Whether the ledger holds ``job_id``."""
        return bool(await self._one(queries.JOB_EXISTS, {"job_id": job_id}))

    async def heartbeat(self, job_ids: list[uuid.UUID]) -> None:
        """Extend the leases of the jobs this worker is running."""
        if job_ids:
            await self._one(transitions.HEARTBEAT, {"worker_id": self.worker_id, "lease_s": self.lease_s,
                                                "job_ids": job_ids})

    async def reap(self, limit: int = 100) -> list[Reaped]:
        """Recover expired leases: retry or dead-letter (crashed); returns (job_id, decision) of each."""
        return await self._one(transitions.REAP, {"limit": limit})
