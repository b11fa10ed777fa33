"""Every SQL statement of the workers, each with what it is for.

Completion statements are fenced: they change the job only while it is
``running`` under the attempt number this worker started, so a stale worker
finishing late (after the reaper gave its job to another attempt) changes
nothing and its handler's writes are rolled back.
"""

from __future__ import annotations

from outbox._queries import DEAD, RETRY, START_ATTEMPT, SUCCEED
from outbox._sql import Statement

__all__ = ["DEAD", "DEAD_MESSAGE", "DEAD_WITHOUT_ATTEMPT", "DEFER", "HEARTBEAT", "JOB_EXISTS", "PAUSES", "REAP",
           "RETRY", "START_ATTEMPT", "SUCCEED"]

# A job that will not run (unknown task, broker dead-lettered it): dead unless already finished or running.
# Locks the pending row first, in the relay's lock order (pending, then jobs), as DEFER and RETRY do.
DEAD_WITHOUT_ATTEMPT = Statement("worker.dead_without_attempt", """
WITH locked AS MATERIALIZED (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs SET status = 'dead', finished_at = clock_timestamp(), last_error = :error_message
    WHERE id = :job_id AND status IN ('pending', 'published', 'retrying')
      AND (SELECT count(*) FROM locked) >= 0  -- evaluated before the job row is locked
    RETURNING *
), p AS (
    DELETE FROM outbox.pending WHERE job_id IN (SELECT id FROM j)
), d AS (
    INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                     error_message, attempts, enqueued_at, redrive_count)
    SELECT id, task, tier, priority, payload, headers, :reason, :error_type, :error_message,
           attempts, enqueued_at, redrive_count
    FROM j
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
)
SELECT count(*) FROM j
""")

# A message that names no job we hold (garbage, foreign, or pruned): keep its raw body.
DEAD_MESSAGE = Statement("worker.dead_message", """
INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, raw_body, reason, error_type,
                                 error_message)
VALUES (CAST(:job_id AS uuid), :task, :tier, :priority, CAST(:payload AS jsonb), CAST(:headers AS jsonb),
        :raw_body, :reason, :error_type, :error_message)
ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
""")

# Keep alive the leases of the jobs this worker is running right now. Only those: a lease whose
# outcome could not be recorded (Postgres failed mid-finish) must expire so the reaper recovers it.
# A lease another statement holds (a success or retry deleting it, the reaper) is skipped, never
# waited for: the heartbeat then cannot be part of a lock cycle, and the next beat (lease_s / 3
# later) renews a lease that is still there.
HEARTBEAT = Statement("worker.heartbeat", """
UPDATE outbox.leases SET expires_at = now() + make_interval(secs => CAST(:lease_s AS float8))
WHERE job_id IN (
    SELECT job_id FROM outbox.leases
    WHERE worker_id = :worker_id AND job_id = ANY(CAST(:job_ids AS uuid[]))
    FOR UPDATE SKIP LOCKED
)
""")

# Recover expired leases (see the SQL function outbox.reap).
REAP = Statement("worker.reap", """
SELECT job_id, decision FROM outbox.reap(:limit)
""")

# Does the ledger hold this job (a dlq copy of a job that finished elsewhere is not a failure)?
JOB_EXISTS = Statement("worker.job_exists", """
SELECT 1 FROM outbox.jobs WHERE id = CAST(:job_id AS uuid)
""")

# Defer a job that may not start yet (paused, rate-limited, concurrency, open breaker) back through the
# outbox, consuming no attempt. Locks the pending row first, in the relay's lock order (pending, then
# jobs); a stale copy of a scheduled retry, a running or a finished job is left alone (no row returned).
DEFER = Statement("worker.defer", """
WITH locked AS (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs
    SET status = 'pending', available_at = clock_timestamp() + make_interval(secs => CAST(:delay_s AS float8))
    WHERE id = :job_id AND status IN ('pending', 'published', 'retrying')
      AND NOT (status = 'retrying' AND available_at > now())
      AND (SELECT count(*) FROM locked) >= 0
    RETURNING id, tier, priority, available_at
)
INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
FROM j LEFT JOIN outbox.tiers AS t ON t.name = j.tier
ON CONFLICT (job_id) DO UPDATE SET available_at = EXCLUDED.available_at
RETURNING job_id
""")

# The pauses in force (the workers' cache is refreshed from this every second).
PAUSES = Statement("worker.pauses", """
SELECT scope, name FROM outbox.pauses
""")
