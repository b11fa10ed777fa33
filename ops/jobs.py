"""Jobs for operators: a filtered, keyset-paginated listing and one job with its progress and timeline."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from outbox import _queries as outbox_queries
from outbox._sql import Statement, run_async
from tierbox.ops import cursors, queries
from tierbox.ops.dead_letters import utc
from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.models import Job, JobDetail, JobPage, TimelineEvent
from tierbox.ops.redaction import redacted_row

#: Without ``since``, the listing looks this far back: a bounded walk of ``ix_jobs_enqueued_at`` even
#: when a filter matches nothing, whatever the history holds.
DEFAULT_WINDOW = timedelta(hours=24)
#: Progress events shown in a job's timeline: the latest ones (a long job reports thousands).
TIMELINE_PROGRESS = 100


class JobProgress(msgspec.Struct, kw_only=True):
    """A job's latest ``ctx.progress`` (docs/progress.md)."""

    #: From 0 to 1.
    fraction: float
    message: str | None
    data: Any
    at: datetime
    #: The SSE event id of this progress.
    event_id: int


class JobStatusDetail(JobDetail, kw_only=True):
    """A job, its latest progress (None if it reported none) and its timeline, oldest event first."""

    progress: JobProgress | None = None


class JobFilter(msgspec.Struct, kw_only=True):
    """Filters of the job listing (all optional; the time range is on ``enqueued_at``, default last 24 h)."""

    tier: str | None = None
    task: str | None = None
    status: str | None = None
    since: datetime | None = None
    until: datetime | None = None


# One job by its idempotency key, through outbox.idempotency_keys (its primary key: at most one row),
# then the job's primary key (one partition: revision 0017).
JOB_BY_KEY = Statement("ops.job_by_key", f"""
SELECT {", ".join(queries.JOB_COLUMNS)} FROM outbox.jobs
WHERE id = (SELECT job_id FROM outbox.idempotency_keys WHERE key = :key)
""")


def to_job(row: Any) -> Job:
    """A row of the job statements as a redacted :class:`Job`."""
    return Job(**redacted_row(queries.JOB_COLUMNS, row))


async def page(conn: Any, flt: JobFilter, limit: int, cursor: str | None = None) -> JobPage:
    """Jobs matching ``flt``, newest first, after ``cursor``."""
    after_at, after_key = cursors.decode(cursor)
    if after_key is not None:
        try:
            uuid.UUID(after_key)
        except ValueError as exc:
            raise invalid("cursor", "not a cursor this API returned") from exc
    since = utc(flt.since) or datetime.now(UTC) - DEFAULT_WINDOW
    params = {**msgspec.structs.asdict(flt), "since": since, "until": utc(flt.until), "after_at": after_at,
              "after_id": after_key, "limit": limit}
    items = [to_job(r) for r in await run_async(conn, queries.JOBS_PAGE, params)]
    last = items[-1] if len(items) == limit else None
    return JobPage(items=items, next_cursor=cursors.encode(last.enqueued_at, last.id) if last else None)


async def show(conn: Any, job_id: uuid.UUID) -> JobStatusDetail:
    """One job, its latest progress and its timeline (with its latest progress events); 404 if the
    ledger has no such job."""
    rows = await run_async(conn, queries.JOB_ONE, {"job_id": str(job_id)})
    if not rows:
        raise RequestError(404, f"no job {job_id}")
    events = await run_async(conn, queries.TIMELINE, {"job_id": str(job_id)})
    timeline = [TimelineEvent(at=e.at, event=e.event, attempt=e.attempt, detail=e.detail) for e in events]
    recent = await run_async(conn, outbox_queries.JOB_PROGRESS_RECENT,
                             {"job_id": str(job_id), "limit": TIMELINE_PROGRESS})
    progress = [TimelineEvent(at=p.at, event="progress", attempt=None,
                              detail={"fraction": p.fraction, "message": p.message, "event_id": p.id})
                for p in reversed(recent)]
    # Stable: an attempt's start and its first progress keep their order when their times tie.
    timeline = sorted(timeline + progress, key=lambda e: e.at)
    latest = recent[0] if recent else None
    return JobStatusDetail(
        job=to_job(rows[0]), timeline=timeline,
        progress=JobProgress(fraction=latest.fraction or 0.0, message=latest.message, data=latest.data,
                             at=latest.at, event_id=latest.id) if latest else None)


async def by_idempotency_key(conn: Any, key: str) -> Job | None:
    """The job enqueued with idempotency key ``key``, or None (two primary-key probes)."""
    rows = await run_async(conn, JOB_BY_KEY, {"key": key})
    return to_job(rows[0]) if rows else None
