"""Every SQL statement of the ``outbox`` package, each with what it is for."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

from outbox._sql import Statement


class KeyedJobRow(NamedTuple):
    """``JOB_IDS_BY_KEY``: the job that holds an idempotency key."""

    idempotency_key: str
    job_id: uuid.UUID


# Look up ids by idempotency key (after a concurrent insert committed under our snapshot).
JOB_IDS_BY_KEY = Statement("job_ids_by_key", """
SELECT idempotency_key, id AS job_id FROM outbox.jobs WHERE idempotency_key = ANY(CAST(:keys AS text[]))
""", row=KeyedJobRow)


# Mirror the tier topology into outbox.tiers (read by SQL functions and views).
UPSERT_TIER = Statement("upsert_tier", """
INSERT INTO outbox.tiers (name, weight, slo_s, queue, pool, notify)
VALUES (:name, :weight, :slo_s, :queue, :pool, :notify)
ON CONFLICT (name) DO UPDATE
SET weight = EXCLUDED.weight, slo_s = EXCLUDED.slo_s, queue = EXCLUDED.queue, pool = EXCLUDED.pool,
    notify = EXCLUDED.notify
""")


class SchemaRevisionRow(NamedTuple):
    """``SCHEMA_REVISION``: the outbox schema's alembic revision."""

    version_num: str


# The outbox schema's alembic revision (its own version table).
SCHEMA_REVISION = Statement("schema_revision", "SELECT version_num FROM outbox.alembic_version",
                            row=SchemaRevisionRow)

# --- Ledger transitions, shared by the workers and outbox.testing. Completion is fenced on the
# attempt number: a stale worker finishing late changes nothing.


class DueForTestingRow(NamedTuple):
    """``TESTING_DUE``: a due job for ``outbox.testing.drain``."""

    job_id: uuid.UUID
    task: str
    tier: str
    #: ``jobs.payload`` as JSON text.
    payload: str


class JobForTestingRow(NamedTuple):
    """``TESTING_JOBS``: a job as ``outbox.testing.enqueued`` shows it."""

    job_id: uuid.UUID
    task: str
    tier: str
    #: ``jobs.payload`` as JSON text.
    payload: str
    status: str
    idempotency_key: str | None


# Due pending jobs visible to the caller's transaction, for outbox.testing.drain (no broker).
TESTING_DUE = Statement("testing.due", """
SELECT p.job_id, j.task, j.tier, j.payload::text
FROM outbox.pending AS p JOIN outbox.jobs AS j ON j.id = p.job_id
WHERE p.available_at <= clock_timestamp() AND NOT (p.job_id = ANY(CAST(:skip AS uuid[])))
  AND (CAST(:only AS uuid[]) IS NULL OR p.job_id = ANY(CAST(:only AS uuid[])))
ORDER BY p.weight DESC, p.priority DESC, p.available_at
LIMIT :limit
""", row=DueForTestingRow)

# Jobs visible to the caller's transaction, newest first, for outbox.testing assertions.
TESTING_JOBS = Statement("testing.jobs", """
SELECT id, task, tier, payload::text, status, idempotency_key
FROM outbox.jobs
WHERE (CAST(:task AS text) IS NULL OR task = :task)
ORDER BY enqueued_at DESC, id
""", row=JobForTestingRow)


# --- Job events (docs/progress.md): a handler's progress, and what the status resource and the SSE
# streams read. Status and outcome events are written by the trigger record_job_event (revision 0012).

# One progress event, fenced on the attempt (a handler abandoned at its time limit, or a stale worker,
# writes nothing once the job moved on); if someone streams the job (outbox.job_watchers), NOTIFY
# wakes the streams at commit. Returns (event id, notifications sent), no row when fenced. The
# scalar subquery runs only for an inserted row.
INSERT_PROGRESS = Statement("job_events.insert_progress", """
WITH ev AS (
    INSERT INTO outbox.job_events (job_id, kind, fraction, message, data)
    SELECT CAST(:job_id AS uuid), 'progress', CAST(:fraction AS float8), CAST(:message AS text), CAST(:data AS jsonb)
    WHERE EXISTS (SELECT 1 FROM outbox.jobs
                  WHERE id = CAST(:job_id AS uuid) AND status = 'running' AND attempts = CAST(:attempt AS integer))
    RETURNING id
)
SELECT ev.id, (SELECT count(*) FROM (
    SELECT pg_notify('tierbox_job_events', CAST(:job_id AS text))
    WHERE EXISTS (SELECT 1 FROM outbox.job_watchers w
                  WHERE w.job_id = CAST(:job_id AS uuid) AND w.expires_at > now())) AS sent) AS notified
FROM ev
""")

# The streams reading these jobs now: their events NOTIFY until ttl_s from now (renewed while read).
WATCH_JOBS = Statement("job_events.watch", """
INSERT INTO outbox.job_watchers AS w (job_id, expires_at)
SELECT DISTINCT unnest(CAST(:job_ids AS uuid[])), now() + make_interval(secs => CAST(:ttl_s AS float8))
ON CONFLICT (job_id) DO UPDATE SET expires_at = GREATEST(w.expires_at, EXCLUDED.expires_at)
""")

# Forget watchers that expired (their streams ended, or their process died).
UNWATCH_EXPIRED = Statement("job_events.unwatch_expired", """
DELETE FROM outbox.job_watchers WHERE expires_at < now()
""")


class JobEventRow(NamedTuple):
    """``JOB_EVENTS_AFTER``: one row of ``outbox.job_events``."""

    id: int
    job_id: uuid.UUID
    at: dt.datetime
    kind: str
    status: str | None
    fraction: float | None
    message: str | None
    data: Any


# A job's events after an id (0: all), oldest first, along the primary key (job_id, id).
JOB_EVENTS_AFTER = Statement("job_events.after", """
SELECT id, job_id, at, kind, status, fraction, message, data FROM outbox.job_events
WHERE job_id = CAST(:job_id AS uuid) AND id > CAST(:after AS bigint)
ORDER BY id
LIMIT CAST(:limit AS integer)
""", row=JobEventRow)


class JobStateRow(NamedTuple):
    """``JOB_STATE``: a job's status and its latest progress, if any."""

    status: str
    progress_id: int | None
    fraction: float | None
    message: str | None
    data: Any
    at: dt.datetime | None
    attempts: int
    finished_at: dt.datetime | None


# A job's status and its latest progress event (the status resource); no row: no such job.
JOB_STATE = Statement("job_events.state", """
SELECT j.status, p.id, p.fraction, p.message, p.data, p.at, j.attempts, j.finished_at
FROM outbox.jobs j
LEFT JOIN LATERAL (
    SELECT e.id, e.fraction, e.message, e.data, e.at FROM outbox.job_events e
    WHERE e.job_id = j.id AND e.kind = 'progress' ORDER BY e.id DESC LIMIT 1
) AS p ON true
WHERE j.id = CAST(:job_id AS uuid)
""", row=JobStateRow)

# A job's latest progress events, newest first (the timeline of the status resource shows these).
JOB_PROGRESS_RECENT = Statement("job_events.progress_recent", """
SELECT id, job_id, at, kind, status, fraction, message, data FROM outbox.job_events
WHERE job_id = CAST(:job_id AS uuid) AND kind = 'progress'
ORDER BY id DESC
LIMIT CAST(:limit AS integer)
""", row=JobEventRow)


# --- Completion webhooks (docs/webhooks.md): declarations and handler results, not job states.

# The handler's return value, for a task with webhook_result=True (docs/webhooks.md): written in the
# attempt's transaction before its success, so the value announced is the succeeding attempt's.
RECORD_RESULT = Statement("webhook.record_result", """
UPDATE outbox.webhooks SET result = CAST(:result AS jsonb) WHERE job_id = :job_id AND include_result
""")

# Completion webhooks of jobs just enqueued (outbox/webhooks.py), in the caller's transaction; a job
# that already existed (idempotency key) keeps its first declaration. The trigger of revision 0013
# enqueues the delivery when the job's outcome is recorded.
DECLARE_WEBHOOKS = Statement("enqueue.webhooks", """
INSERT INTO outbox.webhooks (job_id, url, secret_name, tier, weight, priority, max_retries, include_result)
SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:urls AS text[]), CAST(:secrets AS text[]),
                     CAST(:tiers AS text[]), CAST(:weights AS smallint[]), CAST(:priorities AS smallint[]),
                     CAST(:max_retries AS integer[]), CAST(:include_result AS boolean[]))
ON CONFLICT (job_id) DO NOTHING
""")
