"""Every statement that changes a job's state, each with what it is for.

A job's life (see docs/state_machine.md) is written only here: enqueue, the relay's claim
and publish, a worker's start, heartbeat, success, retry, dead letter and deferral, the
reaper, redrive and discard, an override moving a backlog, and pruning. Reads live beside
the code that reads (``*queries.py``). The bodies of the SQL functions these statements
call (``outbox.start_attempt``, ``outbox.reap``, ``outbox.redrive``, ...) are, as they
stand now, in ``migrations/functions.sql``.

Completion is fenced on the attempt number: a stale worker finishing late changes nothing.
"""

from __future__ import annotations

from typing import Any

from outbox._rows import (
    ClaimedRow,
    EnqueuedRow,
    GroupDiscardedRow,
    GroupRedrivenRow,
    MovedRow,
    RedrivenRow,
    RedriveRow,
    RepublishedRow,
)
from outbox._sql import Statement
from outbox._worker_rows import Changed, Deferred, Reaped, StartManyRow, StartRow, Succeeded

# --- Enqueue, redrive, discard, prune; and the worker's ledger transitions (shared by outbox.testing).

# Insert a batch of jobs and their pending rows in one round trip. Rows whose
# idempotency key already exists insert nothing and return the existing id. A task
# with a tier override in force (outbox.tier_overrides) goes to the override's tier
# unless the caller named a tier explicitly.
ENQUEUE = Statement("enqueue", """
WITH input AS (
    SELECT *
    FROM ROWS FROM (
        unnest(CAST(:ids AS uuid[])), unnest(CAST(:tasks AS text[])), unnest(CAST(:tiers AS text[])),
        unnest(CAST(:weights AS smallint[])), unnest(CAST(:priorities AS smallint[])),
        -- Payloads and headers come as one JSON array each, not as a text[] of documents: the
        -- driver escapes every quote of every element of a text array (measured: about 40 % of
        -- enqueue_many's time for 10,000 jobs); one JSON text is sent as it is.
        jsonb_array_elements(CAST(:payloads AS jsonb)), jsonb_array_elements(CAST(:headers AS jsonb)),
        unnest(CAST(:keys AS text[])), unnest(CAST(:max_retries AS integer[])),
        unnest(CAST(:run_ats AS timestamptz[])), unnest(CAST(:delays_s AS float8[])),
        unnest(CAST(:expires_ats AS timestamptz[])), unnest(CAST(:expires_s AS float8[])),
        unnest(CAST(:explicit AS boolean[]))
    ) WITH ORDINALITY AS t(id, task, tier, weight, priority, payload, headers, idempotency_key,
                          max_retries, run_at, delay_s, expires_at, expires_s, explicit_tier, ord)
),
routed AS (
    SELECT input.*, COALESCE(ov.tier, input.tier) AS route_tier, COALESCE(ov.weight, input.weight) AS route_weight,
           CASE WHEN ov.tier IS NULL THEN input.priority ELSE LEAST(input.priority, ov.weight) END AS route_priority
    FROM input
    LEFT JOIN LATERAL (
        SELECT o.tier, t.weight FROM outbox.tier_overrides AS o JOIN outbox.tiers AS t ON t.name = o.tier
        WHERE o.task = input.task AND o.expires_at > now() AND NOT input.explicit_tier
    ) AS ov ON true
),
-- Idempotency (revision 0017): the key table holds each key once across every partition of
-- outbox.jobs. A row's key is claimed first (ON CONFLICT DO NOTHING waits out a concurrent
-- transaction holding the same key, as the unique index on jobs did); only rows without a key
-- or whose key this statement claimed insert a job.
keys AS (
    INSERT INTO outbox.idempotency_keys (key, job_id)
    SELECT idempotency_key, id FROM input WHERE idempotency_key IS NOT NULL ORDER BY ord
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
),
ins AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries,
                             available_at, expires_at)
    SELECT id, task, route_tier, route_priority, payload, headers, idempotency_key, max_retries,
           COALESCE(run_at, now() + make_interval(secs => COALESCE(delay_s, 0))),
           COALESCE(expires_at, now() + make_interval(secs => expires_s))
    FROM routed
    WHERE idempotency_key IS NULL OR id IN (SELECT job_id FROM keys)
    ORDER BY ord
    RETURNING id, tier, priority, available_at
),
pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT ins.id, ins.tier, routed.route_weight, ins.priority, ins.available_at
    FROM ins JOIN routed ON routed.id = ins.id
)
SELECT input.ord, COALESCE(ins.id, existing.job_id) AS job_id, ins.id IS NOT NULL AS created
FROM input
LEFT JOIN ins ON ins.id = input.id
LEFT JOIN outbox.idempotency_keys AS existing
       ON ins.id IS NULL AND existing.key = input.idempotency_key
ORDER BY input.ord
""", row=EnqueuedRow)

# One job: the same effect as ENQUEUE for a single row, without the array machinery.
# enqueue() is the hot path of every business transaction; measured on the 2-core box
# this statement costs ~0.37 ms in the caller's transaction against ~1.1 ms for the
# 14-array unnest form (bench/README.md, "enqueue overhead"). Returns the same
# (ord, job_id, created) shape; a NULL id means a concurrent transaction committed the key
# after our snapshot (the caller then looks it up by key).
ENQUEUE_ONE = Statement("enqueue_one", """
WITH ov AS (
    SELECT o.tier, t.weight FROM outbox.tier_overrides AS o JOIN outbox.tiers AS t ON t.name = o.tier
    WHERE o.task = CAST(:task AS text) AND o.expires_at > now() AND NOT CAST(:explicit AS boolean)
),
k AS (  -- the key claimed first, as in ENQUEUE
    INSERT INTO outbox.idempotency_keys (key, job_id)
    SELECT CAST(:key AS text), CAST(:id AS uuid) WHERE CAST(:key AS text) IS NOT NULL
    ON CONFLICT (key) DO NOTHING
    RETURNING job_id
),
ins AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries,
                             available_at, expires_at)
    SELECT CAST(:id AS uuid), CAST(:task AS text), COALESCE(ov.tier, CAST(:tier AS text)),
           CASE WHEN ov.tier IS NULL THEN CAST(:priority AS smallint)
                ELSE LEAST(CAST(:priority AS smallint), ov.weight) END,
           CAST(:payload AS jsonb), CAST(:headers AS jsonb), CAST(:key AS text), CAST(:max_retries AS integer),
           COALESCE(CAST(:run_at AS timestamptz),
                    now() + make_interval(secs => COALESCE(CAST(:delay_s AS float8), 0))),
           COALESCE(CAST(:expires_at AS timestamptz), now() + make_interval(secs => CAST(:expires_s AS float8)))
    FROM (SELECT) AS one LEFT JOIN ov ON true
    WHERE CAST(:key AS text) IS NULL OR EXISTS (SELECT FROM k)
    RETURNING id, tier, priority, available_at
),
pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT ins.id, ins.tier, COALESCE((SELECT weight FROM ov), CAST(:weight AS smallint)), ins.priority,
           ins.available_at
    FROM ins
)
SELECT 1 AS ord,
       COALESCE((SELECT id FROM ins),  -- COALESCE stops at the first non-null: no lookup when inserted
                (SELECT job_id FROM outbox.idempotency_keys WHERE key = CAST(:key AS text))) AS job_id,
       EXISTS (SELECT FROM ins) AS created
""", row=EnqueuedRow)

# Redrive one dead letter through the shared SQL function; returns the new job id.
REDRIVE = Statement("redrive", """
SELECT outbox.redrive(CAST(:job_id AS uuid), CAST(:tier AS text), CAST(:by AS text), CAST(:reason AS text))
       AS new_job_id
""", row=RedriveRow)

# Discard one dead letter (kept for audit, never redriven).
DISCARD = Statement("discard", """
SELECT outbox.discard(CAST(:job_id AS uuid), CAST(:by AS text), CAST(:reason AS text))
""")

def _prune_batch(name: str, jobs: str, attempts: str, events: str, ranged: bool) -> Statement[tuple[Any, ...]]:
    # Delete a bounded batch of finished jobs past retention, with their attempts, events, webhook and key
    # (short transactions, no long locks). Run per partition (outbox._maintenance): a DELETE ... USING on
    # the partitioned tables as a whole hash-joined every partition of attempts and job_events for each
    # batch (measured: 332 s for 1 M jobs over 10 days, against 51-144 s unpartitioned).
    def within(column: str) -> str:
        return f" AND {column} >= CAST(:lo AS uuid) AND {column} < CAST(:hi AS uuid)" if ranged else ""

    return Statement(name, f"""
WITH doomed AS (
    SELECT id FROM {jobs}
    WHERE finished_at IS NOT NULL{within("id")}
      AND ((status IN ('succeeded', 'expired')
            AND finished_at < now() - make_interval(secs => CAST(:succeeded_days AS float8) * 86400))
        OR (status IN ('dead', 'discarded')
            AND finished_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)))
    LIMIT :batch
    FOR UPDATE SKIP LOCKED
), events AS (
    -- A job's events go with it (outbox.job_events has no foreign key to cascade: see revision 0012).
    DELETE FROM {events} e USING doomed WHERE e.job_id = doomed.id{within("e.job_id")}
), hooks AS (
    -- And its webhook declaration (no foreign key either: revision 0013).
    DELETE FROM outbox.webhooks w USING doomed WHERE w.job_id = doomed.id
), tries AS (
    -- Its attempts (no foreign key since revision 0017: see outbox._partitions) and idempotency key.
    DELETE FROM {attempts} a USING doomed WHERE a.job_id = doomed.id{within("a.job_id")}
), keys AS (
    DELETE FROM outbox.idempotency_keys k USING doomed WHERE k.job_id = doomed.id
), live AS (
    -- Rows of live work a finished job may still have (a stale republish candidate): no foreign key
    -- cascades to them since revision 0017.
    DELETE FROM outbox.pending p USING doomed WHERE p.job_id = doomed.id
), held AS (
    DELETE FROM outbox.leases l USING doomed WHERE l.job_id = doomed.id
), again AS (
    DELETE FROM outbox.republished r USING doomed WHERE r.job_id = doomed.id
)
DELETE FROM {jobs} j USING doomed WHERE j.id = doomed.id{within("j.id")}
""")


# One day's partitions (:lo, :hi: the day's bounds, so the planner reads only that day's partitions)...
PRUNE_BATCH = _prune_batch("prune_batch", "outbox.jobs", "outbox.attempts", "outbox.job_events", ranged=True)
# ... and the default partitions (pre-0017 jobs: uuid4 ids, scattered over every range).
PRUNE_DEFAULT_BATCH = _prune_batch("prune_default_batch", "ONLY outbox.jobs_default", "ONLY outbox.attempts_default",
                                   "ONLY outbox.job_events_default", ranged=False)

# Delete dead letters past retention that are settled (redriven or discarded) or name no job (garbage).
PRUNE_DEAD_LETTERS = Statement("prune_dead_letters", """
DELETE FROM outbox.dead_letters
WHERE id IN (
    SELECT id FROM outbox.dead_letters
    WHERE (redriven_at IS NOT NULL OR discarded_at IS NOT NULL OR job_id IS NULL)
      AND failed_at < now() - make_interval(secs => CAST(:dead_days AS float8) * 86400)
    LIMIT :batch
)
""")


# Decide whether a delivery runs; if so, count the attempt and take the lease (see the SQL function).
START_ATTEMPT = Statement("ledger.start_attempt", """
SELECT decision, attempt, max_retries, enqueued_at, headers
FROM outbox.start_attempt(CAST(:job_id AS uuid), :worker_id, CAST(:lease_s AS float8), CAST(:acked_early AS boolean),
                          CAST(:token AS uuid))
""", row=StartRow)

# start_attempt for several deliveries in one statement (one commit): workers.batch.StartBatcher.
# It never waits for a job row: the rows are locked first, in id order, SKIP LOCKED, so one job
# row held elsewhere (an operator's transaction, a long MOVE_BACKLOG) cannot stall the whole batch;
# start_attempt then re-locks each row it already holds. A job not locked here (held elsewhere, or
# not in the ledger at all) comes back as 'busy': the worker starts that delivery alone
# (START_ATTEMPT, which waits, or answers 'unknown'). n: the row's position in the arrays.
START_MANY = Statement("ledger.start_many", """
WITH req AS (
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:acked_early AS boolean[]), CAST(:tokens AS uuid[]))
        WITH ORDINALITY AS s(job_id, acked_early, token, n)
),
free AS MATERIALIZED (
    SELECT j.id FROM outbox.jobs j WHERE j.id = ANY(CAST(:job_ids AS uuid[])) ORDER BY j.id FOR UPDATE SKIP LOCKED
),
started AS MATERIALIZED (
    SELECT req.n, r.decision, r.attempt, r.max_retries, r.enqueued_at, r.headers
    FROM req JOIN free ON free.id = req.job_id
    CROSS JOIN LATERAL outbox.start_attempt(req.job_id, :worker_id, CAST(:lease_s AS float8), req.acked_early,
                                         req.token) AS r
)
SELECT n, decision, attempt, max_retries, enqueued_at, headers FROM started
UNION ALL
SELECT req.n, 'busy', 0, 0, NULL::timestamptz, NULL::jsonb FROM req WHERE req.job_id NOT IN (SELECT id FROM free)
ORDER BY 1
""", row=StartManyRow)

# Success, fenced on the attempt; runs in the handler's own transaction.
SUCCEED = Statement("ledger.succeed", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
j AS (
    UPDATE outbox.jobs SET status = 'succeeded', finished_at = (SELECT at FROM ts), last_error = NULL
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING id
), a AS (
    UPDATE outbox.attempts SET finished_at = (SELECT at FROM ts), outcome = 'succeeded'
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
)
SELECT count(*) FROM j
""", row=Changed)

# Success of several sessionless attempts in one statement (workers.batch.SuccessBatcher):
# SUCCEED for each (job_id, attempt) pair, fenced the same way; returns the ids that succeeded.
SUCCEED_MANY = Statement("ledger.succeed_many", """
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
input AS (
    SELECT * FROM unnest(CAST(:job_ids AS uuid[]), CAST(:attempts AS integer[])) AS t(job_id, attempt)
),
-- Job rows locked in id order, as every multi-row ledger/relay statement does: no deadlock cycles.
ordered AS MATERIALIZED (
    SELECT id FROM outbox.jobs WHERE id = ANY(CAST(:job_ids AS uuid[])) ORDER BY id FOR NO KEY UPDATE
),
j AS (
    UPDATE outbox.jobs SET status = 'succeeded', finished_at = (SELECT at FROM ts), last_error = NULL
    FROM input
    WHERE jobs.id = input.job_id AND jobs.attempts = input.attempt AND jobs.status = 'running'
      AND jobs.id IN (SELECT id FROM ordered)
    RETURNING jobs.id, jobs.attempts
), a AS (
    UPDATE outbox.attempts SET finished_at = (SELECT at FROM ts), outcome = 'succeeded'
    FROM j WHERE attempts.job_id = j.id AND attempts.attempt = j.attempts
), l AS (
    DELETE FROM outbox.leases USING j WHERE leases.job_id = j.id
)
SELECT id, attempts FROM j
""", row=Succeeded)


# The failure group of a failure (issue #14, docs/triage.md), kept up to date in the statement that
# records the failure, through the one upsert every failure path shares (the SQL function
# outbox.record_failure_group, also called by outbox.reap). ``{src}`` is a CTE of the failed job(s)
# with columns id, task, tier; ``{attempts}``/``{dead}`` what the failure counts. The statement then
# counts the rows of ``g`` (one per failed job): a SELECT in a CTE runs only if something reads it.
def _group_upsert(src: str, attempts: str, dead: str, outcome: str, reason: str) -> str:
    return f"""
g AS (
    SELECT outbox.record_failure_group(
        CAST(:fingerprint AS text), CAST(:error_type AS text), CAST(:normalized AS text),
        CAST(:error_message AS text), CAST(:frames AS text[]), {src}.task, {src}.tier, {outcome}, {reason},
        {attempts}, {dead}, {src}.id, clock_timestamp()) AS grouped
    FROM {src}
)"""

# Failure with attempts left: record it, schedule the retry through the outbox (durable back-off).
# The job's pending row may still exist: start_attempt does not wait for the relay that published
# the attempt's message, so that relay may hold the row (and delete it when its batch commits).
# Lock it first, in the relay's order (pending, then jobs), waiting out that batch; then upsert.
RETRY = Statement("ledger.retry", f"""
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
locked AS MATERIALIZED (SELECT job_id FROM outbox.pending WHERE job_id = :job_id FOR UPDATE),
j AS (
    UPDATE outbox.jobs
    SET status = 'retrying', available_at = (SELECT at FROM ts) + make_interval(secs => CAST(:delay_s AS float8)),
        last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
      AND (SELECT count(*) FROM locked) >= 0  -- evaluated before the job row is locked
    RETURNING id, task, tier, priority, available_at
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback, fingerprint = CAST(:fingerprint AS text)
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), {_group_upsert("j", "1", "0", "CAST(:outcome AS text)", "NULL::text")}, p AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT j.id, j.tier, COALESCE(t.weight, 5), j.priority, j.available_at
    FROM j LEFT JOIN outbox.tiers t ON t.name = j.tier
    ON CONFLICT (job_id) DO UPDATE SET available_at = EXCLUDED.available_at
)
SELECT count(*) FROM g
""", row=Changed)

# Final failure: mark dead and copy everything a redrive needs into dead_letters.
DEAD = Statement("ledger.dead", f"""
WITH ts AS MATERIALIZED (SELECT clock_timestamp() AS at),  -- one instant for every row of the transition
j AS (
    UPDATE outbox.jobs SET status = 'dead', finished_at = (SELECT at FROM ts), last_error = :error_message
    WHERE id = :job_id AND attempts = :attempt AND status = 'running'
    RETURNING *
), a AS (
    UPDATE outbox.attempts
    SET finished_at = (SELECT at FROM ts), outcome = :outcome, error_type = :error_type,
        error_message = :error_message, traceback = :traceback, fingerprint = CAST(:fingerprint AS text)
    WHERE job_id = :job_id AND attempt = :attempt AND EXISTS (SELECT 1 FROM j)
), l AS (
    DELETE FROM outbox.leases WHERE job_id = :job_id AND EXISTS (SELECT 1 FROM j)
), d AS (
    INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                     error_message, traceback, attempts, enqueued_at, redrive_count, failed_at,
                                     fingerprint)
    SELECT id, task, tier, priority, payload, headers, :reason, :error_type, :error_message, :traceback,
           attempts, enqueued_at, redrive_count, finished_at, CAST(:fingerprint AS text)
    FROM j
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
), {_group_upsert("j", "1", "1", "CAST(:outcome AS text)", "CAST(:reason AS text)")}
SELECT count(*) FROM g
""", row=Changed)


# --- The relay: claim due rows, mark them published, expired or failed to publish.

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
""", row=ClaimedRow)

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


# Reconciliation (tierbox.relay.reconcile): RabbitMQ lost these published jobs' messages; put them back
# in the outbox so the relay publishes them again through the normal confirmed path (MARK_PUBLISHED
# then refreshes published_at), and record each in outbox.republished. Only a job still published,
# not started, published longer ago than the grace and not already pending: the job rows are locked
# in id order first and the conditions re-checked after any wait, so a worker starting the job
# meanwhile (start_attempt locks the job row) wins and nothing is republished for it.
REPUBLISH = Statement("relay.republish", """
WITH ordered AS MATERIALIZED (
    SELECT j.id, j.tier, j.priority FROM outbox.jobs AS j
    WHERE j.id = ANY(CAST(:ids AS uuid[])) AND j.tier = CAST(:tier AS text) AND j.status = 'published'
      AND j.published_at <= now() - make_interval(secs => CAST(:grace_s AS float8))
      AND NOT EXISTS (SELECT 1 FROM outbox.pending AS p WHERE p.job_id = j.id)
    ORDER BY j.id FOR NO KEY UPDATE OF j
), pend AS (
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    SELECT o.id, o.tier, COALESCE(t.weight, 5), o.priority, now()
    FROM ordered AS o LEFT JOIN outbox.tiers AS t ON t.name = o.tier
    ON CONFLICT (job_id) DO NOTHING
    RETURNING job_id, tier
)
INSERT INTO outbox.republished (job_id, tier, reason, actor)
SELECT job_id, tier, CAST(:reason AS text), CAST(:actor AS text) FROM pend
RETURNING job_id
""", row=RepublishedRow)

# --- The workers: dead letters without an attempt, heartbeats, the reaper, deferral.

# A job that will not run (unknown task, broker dead-lettered it): dead unless already finished or running.
# Locks the pending row first, in the relay's lock order (pending, then jobs), as DEFER and RETRY do.
DEAD_WITHOUT_ATTEMPT = Statement("worker.dead_without_attempt", f"""
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
                                     error_message, attempts, enqueued_at, redrive_count, fingerprint)
    SELECT id, task, tier, priority, payload, headers, :reason, :error_type, :error_message,
           attempts, enqueued_at, redrive_count, CAST(:fingerprint AS text)
    FROM j
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
), {_group_upsert("j", "0", "1", "NULL::text", "CAST(:reason AS text)")}
SELECT count(*) FROM g
""", row=Changed)

# A message that names no job we hold (garbage, foreign, or pruned): keep its raw body.
DEAD_MESSAGE = Statement("worker.dead_message", f"""
WITH m AS (
    INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, raw_body, reason, error_type,
                                     error_message, fingerprint)
    VALUES (CAST(:job_id AS uuid), CAST(:task AS text), CAST(:tier AS text), CAST(:priority AS smallint),
            CAST(:payload AS jsonb), CAST(:headers AS jsonb), CAST(:raw_body AS bytea), CAST(:reason AS text),
            CAST(:error_type AS text), CAST(:error_message AS text), CAST(:fingerprint AS text))
    ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING
    RETURNING job_id AS id, task, tier
), {_group_upsert("m", "0", "1", "NULL::text", "CAST(:reason AS text)")}
SELECT count(*) FROM g
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
""", row=Reaped)

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
""", row=Deferred)


# --- Operators: bulk redrive, moving a backlog to an override's tier.

# One batch of a bulk redrive, through the shared SQL function (oldest first, SKIP LOCKED).
REDRIVE_WHERE = Statement("ops.redrive_where", """
SELECT job_id, new_job_id FROM outbox.redrive_where(
    p_task => CAST(:task AS text), p_tier => CAST(:tier AS text), p_reason => CAST(:reason AS text),
    p_since => CAST(:since AS timestamptz), p_until => CAST(:until AS timestamptz),
    p_target_tier => CAST(:target_tier AS text), p_by => CAST(:by AS text), p_note => CAST(:note AS text),
    p_limit => CAST(:limit AS integer))
""", row=RedrivenRow)

# One batch of a failure group's redrive (docs/triage.md): up to :limit of the group's open dead letters,
# oldest first, SKIP LOCKED, through outbox.redrive; the function writes the batch's audit row (operator
# and fingerprint). Returns how many were redriven and how many redrivable ones remain.
REDRIVE_GROUP = Statement("ops.redrive_group", """
SELECT redriven, remaining, job_ids, new_job_ids FROM outbox.redrive_group(
    p_fingerprint => CAST(:fingerprint AS text), p_limit => CAST(:limit AS integer),
    p_tier => CAST(:tier AS text), p_by => CAST(:by AS text), p_note => CAST(:note AS text),
    p_actor_kind => CAST(:actor_kind AS text), p_client_addr => CAST(:client_addr AS text))
""", row=GroupRedrivenRow)

# One batch of a failure group's discard: up to :limit open dead letters (raw messages too); audited by
# the function. Returns how many were discarded and how many open ones remain.
DISCARD_GROUP = Statement("ops.discard_group", """
SELECT discarded, remaining, job_ids FROM outbox.discard_group(
    p_fingerprint => CAST(:fingerprint AS text), p_limit => CAST(:limit AS integer), p_by => CAST(:by AS text),
    p_reason => CAST(:reason AS text), p_actor_kind => CAST(:actor_kind AS text),
    p_client_addr => CAST(:client_addr AS text))
""", row=GroupDiscardedRow)

# Move the task's backlog still waiting in the outbox onto the override's tier (the relay then
# publishes it there); jobs already published keep their tier.
MOVE_BACKLOG = Statement("ops.move_backlog", """
WITH moved AS (
    UPDATE outbox.pending p
    SET tier = t.name, weight = t.weight, priority = LEAST(p.priority, t.weight)
    FROM outbox.jobs j, outbox.tiers t
    WHERE j.id = p.job_id AND j.task = :task AND t.name = :tier AND p.tier <> :tier
    RETURNING p.job_id, p.priority
),
-- Job rows locked in id order, as every multi-row statement (a worker's batched start holds some
-- of them and waits for the next in id order): no deadlock cycle.
ordered AS MATERIALIZED (
    SELECT j.id FROM moved m JOIN outbox.jobs j ON j.id = m.job_id ORDER BY j.id FOR NO KEY UPDATE OF j
)
UPDATE outbox.jobs j SET tier = :tier, priority = moved.priority
FROM moved JOIN ordered ON ordered.id = moved.job_id WHERE j.id = moved.job_id
RETURNING j.id
""", row=MovedRow)


# --- outbox.testing: a retry due at once runs again in the same drain. Its caller's transaction is
# one long one, whose now() stands still while clock_timestamp() moves on: RETRY's available_at
# (clock time) stays "in the future" for start_attempt's now() check until the transaction ends.
# This puts the retry at the transaction's now(), so the next drain call starts it.
TESTING_DUE_NOW = Statement("testing.due_now", """
WITH p AS (
    UPDATE outbox.pending SET available_at = now() WHERE job_id = :job_id RETURNING job_id
)
UPDATE outbox.jobs SET available_at = now() WHERE id = :job_id AND status = 'retrying'
""")
