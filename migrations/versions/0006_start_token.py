"""A delivery whose start committed but whose reply was lost starts again as itself.

``start_attempt`` commits the attempt and the lease before any handler runs. If the connection
drops after that commit but before its reply reaches the worker, the worker backs off and tries
the same delivery again (``Pool.process``), and used to find its own lease: ``running``, so it
acked the message as a duplicate, and the job waited for the lease to expire, after which the
reaper recorded a ``crashed`` attempt that never ran. A job with ``max_retries = 0`` was
dead-lettered without ever running; a batched start (``START_MANY``) multiplied the effect by
the batch.

Now every delivery carries a random start token for as long as the worker handles it, and the
lease keeps it (``leases.start_token``). A start that finds the job ``running`` under a lease
with its own token and the job's current attempt is that same delivery asking again: it gets
``run`` with the same attempt number and a renewed lease. Any other copy (another delivery,
another worker) still gets ``running`` and is absorbed.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24
"""

import importlib

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

START_ATTEMPT = r"""
CREATE FUNCTION outbox.start_attempt(p_job_id uuid, p_worker text, p_lease_s double precision,
                                     p_acked_early boolean DEFAULT false, p_token uuid DEFAULT NULL)
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
        -- The same delivery asking again: its start committed but the reply was lost on the way.
        -- The attempt is its own to run (same attempt number, lease renewed), not a duplicate.
        IF p_token IS NOT NULL THEN
            UPDATE outbox.leases SET expires_at = now() + make_interval(secs => p_lease_s)
             WHERE job_id = p_job_id AND start_token = p_token AND attempt = j.attempts;
            IF FOUND THEN
                RETURN QUERY SELECT 'run'::text, j.attempts, j.max_retries, j.enqueued_at, j.headers;
                RETURN;
            END IF;
        END IF;
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
    INSERT INTO outbox.leases (job_id, attempt, worker_id, expires_at, acked_early, start_token)
    VALUES (p_job_id, j.attempts + 1, p_worker, now() + make_interval(secs => p_lease_s), p_acked_early, p_token);
    RETURN QUERY SELECT 'run'::text, j.attempts + 1, j.max_retries, j.enqueued_at, j.headers;
END $$;
"""


def upgrade() -> None:
    """Add ``leases.start_token`` and a ``start_attempt`` that recognises its own delivery."""
    op.execute("ALTER TABLE outbox.leases ADD COLUMN start_token uuid")
    op.execute("COMMENT ON COLUMN outbox.leases.start_token IS "
               "'Random per delivery: the same delivery asking again after a lost reply resumes its attempt.'")
    # A new parameter with a default: the 4-argument function must go, or calls would be ambiguous.
    op.execute("DROP FUNCTION outbox.start_attempt(uuid, text, double precision, boolean)")
    op.execute(START_ATTEMPT)


def downgrade() -> None:
    """Restore revision 0005's ``start_attempt`` and drop the column."""
    op.execute("DROP FUNCTION outbox.start_attempt(uuid, text, double precision, boolean, uuid)")
    op.execute(importlib.import_module("tierbox.migrations.versions.0005_start_without_waiting").START_ATTEMPT)
    op.execute("ALTER TABLE outbox.leases DROP COLUMN start_token")
