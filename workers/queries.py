"""Every SQL statement of the workers, each with what it is for.

Completion statements are fenced: they change the job only while it is
``running`` under the attempt number this worker started, so a stale worker
finishing late (after the reaper gave its job to another attempt) changes
nothing and its handler's writes are rolled back.
"""

from __future__ import annotations

from outbox.sql import Statement

# Decide whether a delivery runs; if so, count the attempt and take the lease (see the SQL function).
START_ATTEMPT = Statement("worker.start_attempt", """
SELECT decision, attempt, max_retries, enqueued_at, headers
FROM outbox.start_attempt(CAST(:job_id AS uuid), :worker_id, CAST(:lease_s AS float8), CAST(:acked_early AS boolean))
""")

# Success, fenced on the attempt; runs in the handler's own transaction.
SUCCEED = Statement("worker.succeed", """
WITH j AS (
    UPDATE outbox.jobs SET status = 'succeeded', finished_at = clock_timestamp(), last_error = NULL
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING id
), a AS (
    UPDATE outbox.attempts SET finished_at = clock_timestamp(), outcome = 'succeeded'
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
)
SELECT count(*) FROM j
""")

# Failure with attempts left: record it, schedule the retry through the outbox (durable back-off).
RETRY = Statement("worker.retry", """
WITH j AS (
    UPDATE outbox.jobs
    SET status = 'retrying', available_at = clock_timestamp() + make_interval(secs => CAST(:delay_s AS float8)),
        last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING id, tier, priority, available_at
), a AS (
    UPDATE outbox.attempts
    SET finished_at = clock_timestamp(), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), p AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
    FROM j LEFT JOIN outbox.tiers t ON t.name = j.tier
)
SELECT count(*) FROM j
""")

# Final failure: mark dead and copy everything a redrive needs into dead_letters.
DEAD = Statement("worker.dead", """
WITH j AS (
    UPDATE outbox.jobs SET status = 'dead', finished_at = clock_timestamp(), last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING *
), a AS (
    UPDATE outbox.attempts
    SET finished_at = clock_timestamp(), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), d AS (
    INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                     error_message, traceback, attempts, enqueued_at, redrive_count)
    SELECT id, task, tier, priority, payload, headers, :reason, :error_type, :error_message, :traceback,
           attempts, enqueued_at, redrive_count
    FROM j
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
)
SELECT count(*) FROM j
""")

# A job that will not run (unknown task, broker dead-lettered it): dead unless already finished or running.
DEAD_WITHOUT_ATTEMPT = Statement("worker.dead_without_attempt", """
WITH j AS (
    UPDATE outbox.jobs SET status = 'dead', finished_at = clock_timestamp(), last_error = :error_message
    WHERE id = :job_id AND status IN ('pending', 'published', 'retrying')
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

# Keep this worker's leases alive; returns how many it still holds.
HEARTBEAT = Statement("worker.heartbeat", """
UPDATE outbox.leases SET expires_at = now() + make_interval(secs => CAST(:lease_s AS float8))
WHERE worker_id = :worker_id
""")

# Recover expired leases (see the SQL function outbox.reap).
REAP = Statement("worker.reap", """
SELECT job_id, decision FROM outbox.reap(:limit)
""")

# Does the ledger hold this job (a dlq copy of a job that finished elsewhere is not a failure)?
JOB_EXISTS = Statement("worker.job_exists", """
SELECT 1 FROM outbox.jobs WHERE id = CAST(:job_id AS uuid)
""")
