"""Completion webhooks: declarations, and the trigger that enqueues their delivery with the outcome.

``outbox.webhooks`` holds one row per job that asked for a webhook (written by ``outbox.enqueue``
in the caller's transaction): the URL, the *name* of the signing secret (its values live in the
workers' configuration only), and where and how the delivery job runs (tier, weight, priority,
retries: resolved at enqueue from the settings of the enqueuing process).

The trigger ``enqueue_webhook_delivery`` on ``outbox.jobs`` fires when a job reaches a final
outcome (succeeded, dead, discarded, expired) and, if the job has a declaration not yet used,
inserts the delivery job (task ``tierbox.webhook.deliver``) and its outbox row **in the
transaction that records the outcome**: every statement and SQL function that finishes a job (a
worker's success, single or batched, a dead letter, the reaper, expiry by the relay, an operator's
discard, ``outbox.testing.drain``) is covered without each having to remember it, a committed
outcome always has its delivery job, and a rolled-back outcome has none. A dead job that an
operator later discards announces only its first final outcome (``delivery_job_id`` is set once).

Its ``WHEN`` clause is evaluated without calling the function, so only final transitions pay for
it: one primary-key probe of ``outbox.webhooks`` (an update that finds no row for jobs without a
webhook).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01
"""

from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None

TABLE = """
CREATE TABLE outbox.webhooks (
    job_id uuid NOT NULL,
    url text NOT NULL,
    secret_name text NOT NULL,
    tier text NOT NULL,
    weight smallint NOT NULL,
    priority smallint NOT NULL,
    max_retries integer NOT NULL,
    include_result boolean DEFAULT false NOT NULL,
    result jsonb,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    outcome text,
    delivery_job_id uuid,
    delivered_at timestamp with time zone,
    response_status integer,
    CONSTRAINT pk_webhooks PRIMARY KEY (job_id),
    CONSTRAINT ck_webhooks_secret_name CHECK (secret_name ~ '^[A-Za-z0-9_]{1,64}$')
);
COMMENT ON TABLE outbox.webhooks IS 'Completion webhooks of jobs: URL, secret name, and the delivery job once the outcome is recorded.';
"""

FUNCTION = r"""
CREATE OR REPLACE FUNCTION outbox.enqueue_webhook_delivery() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    w outbox.webhooks%ROWTYPE;
    delivery uuid := gen_random_uuid();
BEGIN
    UPDATE outbox.webhooks SET delivery_job_id = delivery, outcome = NEW.status
    WHERE job_id = NEW.id AND delivery_job_id IS NULL
    RETURNING * INTO w;
    IF NOT FOUND THEN
        RETURN NULL;
    END IF;
    -- The payload is the job's id only: the body is built at delivery from the ledger, and the
    -- secret's values are never in the database.
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, idempotency_key, max_retries, available_at)
    VALUES (delivery, 'tierbox.webhook.deliver', w.tier, w.priority,
            jsonb_build_object('args', jsonb_build_array(NEW.id::text), 'kwargs', '{}'::jsonb), '{}'::jsonb,
            'tierbox.webhook:' || NEW.id::text, w.max_retries, now());
    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)
    VALUES (delivery, w.tier, w.weight, w.priority, now());
    RETURN NULL;
END $$;
"""

TRIGGER = """
CREATE OR REPLACE TRIGGER enqueue_webhook_delivery AFTER UPDATE OF status ON outbox.jobs
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status AND NEW.status IN ('succeeded', 'dead', 'discarded', 'expired'))
    EXECUTE FUNCTION outbox.enqueue_webhook_delivery();
"""


def upgrade() -> None:
    """Create ``outbox.webhooks`` and the trigger that enqueues a delivery with each final outcome."""
    op.execute(TABLE)
    op.execute(FUNCTION)
    op.execute(TRIGGER)


def downgrade() -> None:
    """Back to revision 0012: no trigger, no function, no table."""
    op.execute("DROP TRIGGER enqueue_webhook_delivery ON outbox.jobs")
    op.execute("DROP FUNCTION outbox.enqueue_webhook_delivery()")
    op.execute("DROP TABLE outbox.webhooks")
