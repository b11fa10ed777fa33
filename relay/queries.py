"""Every SQL statement of the relay, each with what it is for."""

from __future__ import annotations

from outbox._sql import Statement

# Claim due pending rows, most urgent tier first, skipping rows another relay holds.
# The row locks last until the batch's transaction ends (commit after confirms).
# :min_weight is 0 for the main lane and the urgent weight for the urgent lane: a range
# condition on the leading column of ix_pending_claim_order, so the urgent lane never
# walks a BULK backlog to find nothing.
CLAIM = Statement("relay.claim", """
SELECT p.job_id, p.weight, j.task, j.tier, j.priority, j.payload::text, j.headers::text, j.attempts,
       j.enqueued_at, (j.expires_at IS NOT NULL AND j.expires_at <= now()) AS expired
FROM (
    SELECT job_id, weight, priority, available_at FROM outbox.pending
    WHERE available_at <= now() AND weight >= CAST(:min_weight AS smallint)
      -- a paused tier's backlog waits here, not in the broker (outbox.pauses holds a handful of rows)
      AND NOT EXISTS (SELECT 1 FROM outbox.pauses AS ps WHERE ps.scope = 'tier' AND ps.name = pending.tier)
    ORDER BY weight DESC, priority DESC, available_at
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
) AS p
JOIN outbox.jobs AS j ON j.id = p.job_id
ORDER BY p.weight DESC, p.priority DESC, p.available_at
""")

# Confirmed by the broker: drop the pending rows and stamp the ledger.
# A worker may already have started the job (status running): keep its status.
MARK_PUBLISHED = Statement("relay.mark_published", """
WITH done AS (
    DELETE FROM outbox.pending WHERE job_id = ANY(CAST(:ids AS uuid[])) RETURNING job_id
),
-- Job rows locked in id order (workers' batched successes lock in the same order): no deadlock cycle.
-- (= ANY of the parameter, not IN (done): an index scan, where IN over a CTE planned a seq scan.)
ordered AS MATERIALIZED (
    SELECT id FROM outbox.jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
)
UPDATE outbox.jobs AS j
SET published_at = clock_timestamp(),
    status = CASE WHEN j.status IN ('pending', 'retrying') THEN 'published' ELSE j.status END
FROM done JOIN ordered ON ordered.id = done.job_id WHERE j.id = done.job_id
""")

# A batch that both publishes and expires rows locks all their job rows first, in id order, in one
# statement: MARK_PUBLISHED and MARK_EXPIRED each lock in id order, but one after the other they
# would lock two sorted runs, which a worker's batched success could cross (a deadlock cycle).
LOCK_JOBS = Statement("relay.lock_jobs", """
SELECT id FROM outbox.jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
""")

# Not confirmed (nack, return, timeout, closed channel): keep pending, try again later.
MARK_PUBLISH_FAILED = Statement("relay.mark_publish_failed", """
UPDATE outbox.pending
SET available_at = now() + make_interval(secs => CAST(:delay_s AS float8)),
    publish_attempts = publish_attempts + 1,
    last_publish_error = :error
WHERE job_id = ANY(CAST(:ids AS uuid[]))
""")

# Past expires_at before it was published: never run it, record why.
MARK_EXPIRED = Statement("relay.mark_expired", """
WITH done AS (
    DELETE FROM outbox.pending WHERE job_id = ANY(CAST(:ids AS uuid[])) RETURNING job_id
),
ordered AS MATERIALIZED (  -- id order, as MARK_PUBLISHED
    SELECT id FROM outbox.jobs WHERE id = ANY(CAST(:ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
)
UPDATE outbox.jobs AS j
SET status = 'expired', finished_at = now(), last_error = 'expired before it was published'
FROM done JOIN ordered ON ordered.id = done.job_id
WHERE j.id = done.job_id AND j.status IN ('pending', 'retrying', 'published')
""")

# When the lane's next delayed row becomes due (the lane sleeps until then at most).
NEXT_DUE_IN = Statement("relay.next_due_in", """
SELECT EXTRACT(EPOCH FROM (min(available_at) - now()))::float8 FROM outbox.pending
WHERE weight >= CAST(:min_weight AS smallint)
  AND NOT EXISTS (SELECT 1 FROM outbox.pauses AS ps WHERE ps.scope = 'tier' AND ps.name = pending.tier)
""")

# Relay lag per tier: due rows waiting and the age of the oldest.
LAG = Statement("relay.lag", """
SELECT tier, count(*), EXTRACT(EPOCH FROM (now() - min(available_at)))::float8
FROM outbox.pending WHERE available_at <= now()
GROUP BY tier
""")
