"""Redrive and discard dead letters from Python.

Both call the SQL functions ``outbox.redrive`` and ``outbox.discard`` (see the
migrations), so psql, Python and the admin API share one implementation and
one guard: the UPDATE's WHERE clause refuses a second redrive, so two
operators racing cannot both win. The call runs in a savepoint of the
caller's transaction; a refusal raises :class:`RedriveError` and leaves that
transaction usable. Nothing is committed here.
"""

from __future__ import annotations

import uuid

import psycopg
from sqlalchemy.exc import DBAPIError

from outbox import _transitions as transitions
from outbox._sql import AsyncSessionLike, SyncSession, run, run_async, savepoint, savepoint_async
from outbox.errors import RedriveError
from outbox.tiers import Tier

#: SQLSTATE the SQL functions raise for a refused redrive/discard.
REFUSED_SQLSTATE = "TB001"
#: SQLSTATE for "no such dead letter".
NOT_FOUND_SQLSTATE = "TB404"


def redrive(session: SyncSession, job_id: uuid.UUID | str, tier: Tier | str | None = None, *,
            by: str = "python", reason: str | None = None) -> uuid.UUID:
    """Re-enqueue a dead job as a new job (same task, payload, headers); returns the new id.

    ``tier`` moves it to another tier. Raises :class:`RedriveError` if the job
    has no dead letter or was already redriven or discarded.
    """
    params = {"job_id": str(job_id), "tier": str(tier) if tier else None, "by": by, "reason": reason}
    try:
        with savepoint(session):
            rows = run(session, transitions.REDRIVE, params)
    except (DBAPIError, psycopg.Error) as exc:
        _raise_refusal(exc)
        raise
    return uuid.UUID(str(rows[0].new_job_id))


def discard(session: SyncSession, job_id: uuid.UUID | str, *, by: str = "python", reason: str | None = None) -> None:
    """Mark a dead letter discarded (kept for audit, never redriven)."""
    params = {"job_id": str(job_id), "by": by, "reason": reason}
    try:
        with savepoint(session):
            run(session, transitions.DISCARD, params)
    except (DBAPIError, psycopg.Error) as exc:
        _raise_refusal(exc)
        raise


async def redrive_async(session: AsyncSessionLike, job_id: uuid.UUID | str, tier: Tier | str | None = None, *,
                        by: str = "python", reason: str | None = None) -> uuid.UUID:
    """:func:`redrive` for async sessions and connections."""
    params = {"job_id": str(job_id), "tier": str(tier) if tier else None, "by": by, "reason": reason}
    try:
        async with savepoint_async(session):
            rows = await run_async(session, transitions.REDRIVE, params)
    except (DBAPIError, psycopg.Error) as exc:
        _raise_refusal(exc)
        raise
    return uuid.UUID(str(rows[0].new_job_id))


def _raise_refusal(exc: Exception) -> None:
    """Raise :class:`RedriveError` if ``exc`` is the SQL functions' refusal; otherwise return."""
    orig = getattr(exc, "orig", exc)
    state = getattr(orig, "sqlstate", None)
    if state in (REFUSED_SQLSTATE, NOT_FOUND_SQLSTATE):
        diag = getattr(orig, "diag", None)
        message = getattr(diag, "message_primary", None) or str(orig)
        raise RedriveError(message, not_found=state == NOT_FOUND_SQLSTATE) from exc
