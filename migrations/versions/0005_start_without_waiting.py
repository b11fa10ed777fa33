"""start_attempt no longer waits for the relay's batch to commit; reap and RETRY cope with that.

A relay holds its claimed ``pending`` rows locked from the claim until its batch commits, which
is after every confirm of the batch and the ``MARK_PUBLISHED`` statement. A worker usually
receives a message before that, and ``start_attempt`` used to lock the ``pending`` row first, so
every start waited out the rest of the relay's batch: measured at 200 jobs/s on 2 cores, 1.7 to
2.3 ms of the 4 to 5 ms from commit to handler start.

Now ``start_attempt`` locks only the job row and deletes the ``pending`` row only if no relay
holds it (``FOR UPDATE SKIP LOCKED``). A relay that holds it either commits
``MARK_PUBLISHED``, which deletes it and keeps the job's ``running`` status, or rolls back /
marks the publish failed, and the row is published again: a duplicate, which ``start_attempt``
absorbs (``running`` or ``finished``), never a loss.

So a ``running`` job may still have a ``pending`` row. Everything that gives a running job a new
``pending`` row therefore locks the old one first, in the relay's order (pending, then jobs), and
upserts: ``RETRY`` (a Python statement) waits out the relay's batch; ``reap`` (here), which holds
other jobs' locks in its loop and so must not wait, skips a job whose row a relay holds and gets
it on its next round. Multi-row statements lock job rows in id order (``MARK_PUBLISHED``,
``MARK_EXPIRED``, the relay's ``LOCK_JOBS`` when a batch runs both, ``SUCCEED_MANY``); ``reap``
(here) and the heartbeat take what they need with ``SKIP LOCKED`` and never wait, and reap takes
a job row before its lease and attempt, the order of every finishing statement.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-24
"""

import importlib

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

START_ATTEMPT = r"""
CREATE OR REPLACE FUNCTION outbox.start_attempt(p_job_id uuid, p_worker text, p_lease_s double precision,
                                                p_acked_early boolean DEFAULT false)
RETURNS TABLE (decision text, attempt integer, max_retries integer, enqueued_at timestamptz, headers jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    j outbox.jobs%ROWTYPE;
BEGIN
    -- the pending row is not awaited: a relay may hold it until its batch commits
    SELECT * INTO j FROM outbox.jobs WHERE id = p_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'unknown'::text, 0, 0, NULL::timestamptz, NULL::jsonb;
        RETURN;
    END IF;
    IF j.status IN ('succeeded', 'dead', 'discarded', 'expired') THEN
        RETURN QUERY SELECT 'finished'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    IF j.status = 'running' THEN
        RETURN QUERY SELECT 'running'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    IF j.status = 'retrying' AND j.available_at > now() THEN
        RETURN QUERY SELECT 'not_due'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    -- a stale republish candidate; one a relay holds is its to delete (MARK_PUBLISHED) or republish
    DELETE FROM outbox.pending p
     WHERE p.job_id IN (SELECT q.job_id FROM outbox.pending q WHERE q.job_id = p_job_id FOR UPDATE SKIP LOCKED);
    IF j.expires_at IS NOT NULL AND j.expires_at <= now() THEN
        UPDATE outbox.jobs SET status = 'expired', finished_at = now(), last_error = 'expired before it started'
         WHERE id = p_job_id;
        RETURN QUERY SELECT 'expired'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
        RETURN;
    END IF;
    UPDATE outbox.jobs SET status = 'running', attempts = j.attempts + 1, started_at = now()
     WHERE id = p_job_id;
    INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at)
    VALUES (p_job_id, j.attempts + 1, p_worker, now());
    INSERT INTO outbox.leases (job_id, attempt, worker_id, expires_at, acked_early)
    VALUES (p_job_id, j.attempts + 1, p_worker, now() + make_interval(secs => p_lease_s), p_acked_early);
    RETURN QUERY SELECT 'run'::text, j.attempts + 1, j.max_retries, j.enqueued_at, j.headers;
END $$;
"""

REAP = r"""
CREATE OR REPLACE FUNCTION outbox.reap(p_limit integer DEFAULT 100)
RETURNS TABLE (job_id uuid, decision text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    l outbox.leases%ROWTYPE;
    j outbox.jobs%ROWTYPE;
    w smallint;
    msg text := 'lease expired: the worker died or lost its database connection';
BEGIN
    FOR l IN
        SELECT * FROM (
            SELECT * FROM outbox.leases le WHERE le.expires_at < now()
            ORDER BY le.expires_at LIMIT p_limit FOR UPDATE SKIP LOCKED
        ) AS expired ORDER BY expired.job_id  -- job rows in id order, as every multi-row statement
    LOOP
        -- A relay mid-batch on this job's pending row: do not wait for it while holding other jobs'
        -- locks; the lease stays expired and the next round takes it.
        PERFORM 1 FROM outbox.pending p WHERE p.job_id = l.job_id;
        IF FOUND THEN
            PERFORM 1 FROM outbox.pending p WHERE p.job_id = l.job_id FOR UPDATE SKIP LOCKED;
            CONTINUE WHEN NOT FOUND;
        END IF;
        -- The job row before the lease's neighbours (the order every finishing statement uses: job,
        -- attempts, lease), and never waited for: a worker finishing this job right now holds it.
        SELECT * INTO j FROM outbox.jobs WHERE id = l.job_id FOR NO KEY UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;
        DELETE FROM outbox.leases le WHERE le.job_id = l.job_id;
        UPDATE outbox.attempts a
           SET finished_at = now(), outcome = 'crashed', error_type = 'WorkerLost', error_message = msg
         WHERE a.job_id = l.job_id AND a.attempt = l.attempt AND a.outcome IS NULL;
        CONTINUE WHEN NOT (j.attempts = l.attempt AND j.status = 'running');
        IF j.attempts >= j.max_retries + 1 THEN
            UPDATE outbox.jobs SET status = 'dead', finished_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.dead_letters (job_id, task, tier, priority, payload, headers, reason, error_type,
                                             error_message, attempts, enqueued_at, redrive_count)
            VALUES (j.id, j.task, j.tier, j.priority, j.payload, j.headers, 'crashed', 'WorkerLost', msg,
                    j.attempts, j.enqueued_at, j.redrive_count)
            ON CONFLICT (job_id) WHERE job_id IS NOT NULL DO NOTHING;
            job_id := j.id; decision := 'dead';
        ELSE
            SELECT t.weight INTO w FROM outbox.tiers t WHERE t.name = j.tier;
            UPDATE outbox.jobs SET status = 'retrying', available_at = now(), last_error = msg WHERE id = j.id;
            INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
            VALUES (j.id, j.tier, COALESCE(w, 5), j.priority, now())
            ON CONFLICT ON CONSTRAINT pk_pending DO UPDATE SET available_at = EXCLUDED.available_at;
            job_id := j.id; decision := 'retry';
        END IF;
        RETURN NEXT;
    END LOOP;
END $$;
"""


def _from_0001(name: str) -> str:
    """A function exactly as revision 0001 created it (a downgrade must restore it verbatim)."""
    functions: str = importlib.import_module("tierbox.migrations.versions.0001_outbox_schema").FUNCTIONS
    start = functions.index(f"CREATE FUNCTION outbox.{name}(")
    end = functions.index("END $$;", start) + len("END $$;")
    return "CREATE OR REPLACE FUNCTION" + functions[start + len("CREATE FUNCTION"):end]


def upgrade() -> None:
    """Replace start_attempt (skips a pending row a relay holds) and reap (skips, upserts, id order)."""
    op.execute(START_ATTEMPT)
    op.execute(REAP)


def downgrade() -> None:
    """Restore the versions that wait for the relay's lock."""
    op.execute(_from_0001("start_attempt"))
    op.execute(_from_0001("reap"))
