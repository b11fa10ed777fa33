"""Job events: status changes, progress and outcomes of each job, for the status resource and SSE streams.

``outbox.job_events`` holds one row per event of a job (issue #16): a change of status
(``status``: running, retrying), a handler's ``ctx.progress()`` (``progress``), and the outcome
(``outcome``: succeeded, dead, discarded, expired). The ``bigserial`` id is the SSE event id, so a
reconnecting client resumes with ``Last-Event-ID`` from the table.

Status and outcome events are written by a trigger on ``outbox.jobs`` (``record_job_event``) in
the transaction that changes the status, whichever statement or SQL function does it (start,
success, retry, dead letter, reaper, discard, expiry), and ``pg_notify('tierbox_job_events',
job_id)`` wakes the streams at commit. Its ``WHEN`` clause is evaluated without calling the
function, so the relay's ``published`` and a deferral's ``pending`` cost nothing. Progress rows are
written by the worker in short transactions of their own (outbox/_progress.py), off the ledger row.

Only a job someone is streaming NOTIFYs: ``outbox.job_watchers`` (unlogged, a row per watched job
with an expiry the streams keep renewing) is probed by the trigger and the progress writer. A
transaction that NOTIFYs takes the notification queue's lock at commit, so notifying commits are
serialised database-wide; with nobody watching, start and succeed pay an index probe instead
(bench/job_events.py compares the three: no events, events, events of watched jobs).

Its one index is its primary key, ``(job_id, id)``: every read is one job's events in id order, and
``id`` (from its sequence) is unique on its own, so a second index on ``id`` would only cost each
insert. The table has no foreign key to ``jobs``: a key check on every insert would lock the job row
(``FOR KEY SHARE``) from the progress writer's transaction; pruning deletes a job's events with the
job instead (``PRUNE_BATCH``).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-01
"""

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE outbox.job_events (
    id bigserial NOT NULL,
    job_id uuid NOT NULL,
    at timestamp with time zone DEFAULT clock_timestamp() NOT NULL,
    kind text NOT NULL,
    status text,
    fraction double precision,
    message text,
    data jsonb,
    CONSTRAINT pk_job_events PRIMARY KEY (job_id, id),
    CONSTRAINT ck_job_events_kind CHECK (kind IN ('status', 'progress', 'outcome')),
    CONSTRAINT ck_job_events_fraction CHECK (fraction IS NULL OR (fraction >= 0 AND fraction <= 1))
);
COMMENT ON TABLE outbox.job_events IS 'Status changes, progress and outcomes of jobs, in order (id is the SSE event id).';
CREATE UNLOGGED TABLE outbox.job_watchers (
    job_id uuid NOT NULL,
    expires_at timestamp with time zone NOT NULL,
    CONSTRAINT pk_job_watchers PRIMARY KEY (job_id)
);
COMMENT ON TABLE outbox.job_watchers IS 'Jobs whose event stream is being read: only their events NOTIFY (renewed by the streams).';
"""

RECORD_JOB_EVENT = r"""
CREATE OR REPLACE FUNCTION outbox.record_job_event() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO outbox.job_events (job_id, kind, status, data)
    VALUES (NEW.id,
            CASE WHEN NEW.status IN ('succeeded', 'dead', 'discarded', 'expired') THEN 'outcome' ELSE 'status' END,
            NEW.status, jsonb_build_object('attempt', NEW.attempts));
    -- NOTIFY (a database-wide lock at commit) only for a job whose stream someone reads.
    IF EXISTS (SELECT 1 FROM outbox.job_watchers w WHERE w.job_id = NEW.id AND w.expires_at > now()) THEN
        PERFORM pg_notify('tierbox_job_events', NEW.id::text);
    END IF;
    RETURN NULL;
END $$;
"""

TRIGGER = """
CREATE OR REPLACE TRIGGER record_job_event AFTER UPDATE OF status ON outbox.jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status
          AND NEW.status IN ('running', 'retrying', 'succeeded', 'dead', 'discarded', 'expired'))
    EXECUTE FUNCTION outbox.record_job_event();
"""


def upgrade() -> None:
    """Create ``outbox.job_events``, ``outbox.job_watchers`` and the trigger that records status changes."""
    op.execute(TABLE)
    op.execute(RECORD_JOB_EVENT)
    op.execute(TRIGGER)


def downgrade() -> None:
    """Back to revision 0011: no trigger, no function, no table."""
    op.execute("DROP TRIGGER record_job_event ON outbox.jobs")
    op.execute("DROP FUNCTION outbox.record_job_event()")
    op.execute("DROP TABLE outbox.job_watchers")
    op.execute("DROP TABLE outbox.job_events")
