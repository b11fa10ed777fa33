"""Dead letters for operators: list, show, count, redrive (one or in bulk), discard.

The API and the CLI both call these, so they show the same data and write the
same audit rows. Reads take a connection; actions take the engine because each
opens its own transaction(s): the audit row commits with the change, and a
refusal is audited too (the refused call ran in a savepoint, so the
transaction that records it is still usable), then raised.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

import outbox
from outbox import _transitions as transitions
from outbox._sql import run_async
from outbox.errors import RedriveError
from outbox.redrive import NOT_FOUND_SQLSTATE, REFUSED_SQLSTATE
from tierbox.ops import audit, cursors, queries
from tierbox.ops.audit import Actor
from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.models import (
    Attempt,
    BulkRedriveRequest,
    BulkRedriveResult,
    DeadLetter,
    DeadLetterDetail,
    DeadLetterPage,
    Redriven,
    TierReasonCount,
)
from tierbox.ops.redaction import redacted_row


class DeadLetterFilter(msgspec.Struct, kw_only=True):
    """Filters of the dead-letter listing (all optional; ``state`` None means every state)."""

    tier: str | None = None
    task: str | None = None
    reason: str | None = None
    error_type: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    state: str | None = "open"


def utc(value: datetime | None) -> datetime | None:
    """A naive datetime is taken as UTC (so it means the same whatever the session's time zone)."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


def to_dead_letter(row: Any) -> DeadLetter:
    """A row of the DLQ statements as a redacted :class:`DeadLetter`."""
    return DeadLetter(**redacted_row(queries.DEAD_LETTER_COLUMNS, row))


async def page(conn: Any, flt: DeadLetterFilter, limit: int, cursor: str | None = None) -> DeadLetterPage:
    """Dead letters matching ``flt``, newest first, after ``cursor``."""
    after_at, after_key = cursors.decode(cursor)
    if after_key is not None and not cursors.is_bigint(after_key):
        raise invalid("cursor", "not a cursor this API returned")
    params = {**msgspec.structs.asdict(flt), "since": utc(flt.since), "until": utc(flt.until),
              "after_failed_at": after_at, "after_id": int(after_key) if after_key else None, "limit": limit}
    items = [to_dead_letter(r) for r in await run_async(conn, queries.DLQ_PAGE, params)]
    last = items[-1] if len(items) == limit else None
    return DeadLetterPage(items=items, next_cursor=cursors.encode(last.failed_at, last.id) if last else None)


async def show(conn: Any, job_id: uuid.UUID) -> DeadLetterDetail:
    """One dead letter and its job's attempts; 404 if the job has no dead letter."""
    rows = await run_async(conn, queries.DLQ_ONE, {"job_id": str(job_id)})
    if not rows:
        raise RequestError(404, f"no dead letter for job {job_id}")
    return DeadLetterDetail(dead_letter=to_dead_letter(rows[0]), attempts=await attempts(conn, job_id))


async def attempts(conn: Any, job_id: uuid.UUID) -> list[Attempt]:
    """Every attempt of ``job_id``, in order."""
    rows = await run_async(conn, queries.ATTEMPTS, {"job_id": str(job_id)})
    return [Attempt(attempt=r.attempt, worker_id=r.worker_id, started_at=r.started_at, finished_at=r.finished_at,
                    outcome=r.outcome, error_type=r.error_type, error_message=r.error_message,
                    traceback_tail=r.traceback_tail) for r in rows]


async def open_by_tier(conn: Any) -> dict[str, int]:
    """Open dead letters (neither redriven nor discarded) per tier; tiers with none are absent."""
    return {r.tier: int(r.open_count) for r in await run_async(conn, queries.DLQ_OPEN_BY_TIER)}


async def by_tier(conn: Any) -> list[TierReasonCount]:
    """Open dead letters counted per tier and reason."""
    rows = await run_async(conn, queries.DLQ_BY_TIER)
    return [TierReasonCount(tier=r.tier, reason=r.reason, count=r.open_count) for r in rows]


async def redrive(engine: AsyncEngine, actor: Actor, job_id: uuid.UUID, *, tier: str | None = None,
                  reason: str | None = None) -> Redriven:
    """Redrive one dead letter through ``outbox.redrive``; audited. Raises RedriveError (404/409)."""
    detail: dict[str, Any] = {"tier": tier, "reason": reason}
    refused: RedriveError | None = None
    async with engine.begin() as conn:
        try:
            new_id = await outbox.redrive_async(conn, job_id, tier, by=actor.name, reason=reason)
        except RedriveError as exc:
            refused = exc
            await audit.record(conn, actor, "redrive", [job_id], _refusal(exc), {**detail, "error": str(exc)})
        else:
            await audit.record(conn, actor, "redrive", [job_id], "ok", {**detail, "new_job_id": str(new_id)})
    if refused is not None:  # raised after the commit, so the refusal's audit row stays
        raise refused
    return Redriven(job_id=job_id, new_job_id=new_id)


async def discard(engine: AsyncEngine, actor: Actor, job_id: uuid.UUID, *, reason: str | None = None) -> None:
    """Discard one dead letter through ``outbox.discard``; audited. Raises RedriveError (404/409)."""
    refused: RedriveError | None = None
    async with engine.begin() as conn:
        try:
            # The shared sync implementation, run on this async connection's greenlet bridge.
            await conn.run_sync(lambda sync_conn: outbox.discard(sync_conn, job_id, by=actor.name, reason=reason))
        except RedriveError as exc:
            refused = exc
            await audit.record(conn, actor, "discard", [job_id], _refusal(exc), {"reason": reason, "error": str(exc)})
        else:
            await audit.record(conn, actor, "discard", [job_id], "ok", {"reason": reason})
    if refused is not None:
        raise refused


def _refusal(exc: RedriveError) -> str:
    return "not_found" if exc.not_found else "refused"


Sleep = Callable[[float], Awaitable[None]]


async def redrive_bulk(engine: AsyncEngine, actor: Actor, req: BulkRedriveRequest,
                       sleep: Sleep = asyncio.sleep) -> BulkRedriveResult:
    """Redrive up to ``req.limit`` matching dead letters, ``req.rate_per_s`` per second.

    Each batch is one transaction through ``outbox.redrive_where`` with its own
    audit row, so a bulk redrive interrupted half way has redriven (and
    recorded) whole batches only, and the tier it targets gets a steady trickle
    instead of a flood. A dry run only counts.
    """
    flt = {"task": req.filter.task, "tier": req.filter.tier, "reason": req.filter.reason,
           "since": utc(req.filter.since), "until": utc(req.filter.until)}
    if req.dry_run:
        async with engine.connect() as conn:
            rows = await run_async(conn, queries.REDRIVE_WHERE_COUNT, {**flt, "limit": req.limit})
        return BulkRedriveResult(dry_run=True, count=int(rows[0].total), batches=0, redriven=[])
    done: list[Redriven] = []
    batches = 0
    while len(done) < req.limit:
        started = time.monotonic()
        size = min(req.rate_per_s, req.limit - len(done))
        batch = await _bulk_batch(engine, actor, req, flt, size, batches)
        done += batch
        batches += 1
        if len(batch) < size or len(done) >= req.limit:  # nothing more matches, or done
            break
        await sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return BulkRedriveResult(dry_run=False, count=len(done), batches=batches, redriven=done)


async def _bulk_batch(engine: AsyncEngine, actor: Actor, req: BulkRedriveRequest, flt: dict[str, Any],
                      size: int, number: int) -> list[Redriven]:
    async with engine.begin() as conn:
        try:
            rows = await run_async(conn, transitions.REDRIVE_WHERE, {
                **flt, "target_tier": req.target_tier, "by": actor.name, "note": req.reason, "limit": size})
        except DBAPIError as exc:  # outbox.redrive refused one row (e.g. the target tier vanished): batch undone
            state = getattr(exc.orig, "sqlstate", None)
            if state not in (REFUSED_SQLSTATE, NOT_FOUND_SQLSTATE):
                raise
            raise RedriveError(str(exc.orig).splitlines()[0], not_found=state == NOT_FOUND_SQLSTATE) from exc
        batch = [Redriven(job_id=r.job_id, new_job_id=r.new_job_id) for r in rows]
        await audit.record(conn, actor, "redrive_bulk", [b.job_id for b in batch], "ok", {
            "reason": req.reason, "target_tier": req.target_tier, "batch": number,
            "filter": msgspec.to_builtins(req.filter), "new_job_ids": [str(b.new_job_id) for b in batch]})
    return batch
