"""Every SQL statement of the scheduler, each with what it is for."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from outbox._sql import Statement


class ScheduleStateRow(NamedTuple):
    """``SCHEDULE_STATE``: where a schedule's next runs are counted from, and its last run's due time."""

    name: str
    #: ``last_due_at``, or when the row was first written for a schedule that has never run.
    anchor: dt.datetime
    last_due_at: dt.datetime | None


class AdvancedRow(NamedTuple):
    """``ADVANCE``: the schedule that moved (no row: a stale leader was fenced)."""

    name: str


class ScheduleRow(NamedTuple):
    """``LIST_SCHEDULES``: one stored schedule, as ``outbox.schedules`` holds it."""

    name: str
    task: str
    cron: str
    tz: str
    expires_s: float
    misfire: str
    last_due_at: dt.datetime | None
    last_job_id: uuid.UUID | None
    last_enqueued_at: dt.datetime | None
    updated_at: dt.datetime


# Record a declared schedule; a changed declaration keeps its last-run state, an unchanged one is not
# rewritten (updated_at anchors a schedule that has never run, so it must not move on every tick).
UPSERT_SCHEDULE = Statement("scheduler.upsert_schedule", """
INSERT INTO outbox.schedules AS s (name, task, cron, tz, expires_s, misfire)
VALUES (:name, :task, :cron, :tz, CAST(:expires_s AS float8), :misfire)
ON CONFLICT (name) DO UPDATE
SET task = EXCLUDED.task, cron = EXCLUDED.cron, tz = EXCLUDED.tz, expires_s = EXCLUDED.expires_s,
    misfire = EXCLUDED.misfire, updated_at = now()
WHERE (s.task, s.cron, s.tz, s.expires_s, s.misfire)
      IS DISTINCT FROM (EXCLUDED.task, EXCLUDED.cron, EXCLUDED.tz, EXCLUDED.expires_s, EXCLUDED.misfire)
""")

# The durable state of the named schedules: runs are due after last_due_at, or after the row
# was first written for a schedule that has never run (never replay history on first sight).
SCHEDULE_STATE = Statement("scheduler.schedule_state", """
SELECT name, COALESCE(last_due_at, updated_at) AS anchor, last_due_at
FROM outbox.schedules WHERE name = ANY(CAST(:names AS text[]))
""", row=ScheduleStateRow)

# Advance one schedule past a run, in the run's enqueue transaction. The guard on the previous
# value fences a stale leader: if anyone advanced it meanwhile, no row comes back and we roll back.
# last_job_id keeps the last job actually enqueued when a run is skipped (expired or misfired).
ADVANCE = Statement("scheduler.advance", """
UPDATE outbox.schedules
SET last_due_at = CAST(:due AS timestamptz), last_job_id = COALESCE(CAST(:job_id AS uuid), last_job_id),
    last_enqueued_at = CASE WHEN CAST(:job_id AS uuid) IS NULL THEN last_enqueued_at ELSE now() END,
    updated_at = now()
WHERE name = :name AND last_due_at IS NOT DISTINCT FROM CAST(:previous AS timestamptz)
RETURNING name
""", row=AdvancedRow)

# Every stored schedule, for `tierbox schedules`.
LIST_SCHEDULES = Statement("scheduler.list_schedules", """
SELECT name, task, cron, tz, expires_s, misfire, last_due_at, last_job_id, last_enqueued_at, updated_at
FROM outbox.schedules ORDER BY name
""", row=ScheduleRow)
