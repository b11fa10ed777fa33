"""Wake-up by urgency: NOTIFY only when a row of an urgent tier is inserted.

* ``outbox.tiers.notify``: mirrored from the topology (``TierSpec.urgent``: SLO at most 30 s,
  i.e. critical, high and calls by default).
* ``outbox.notify_pending`` becomes a statement trigger with a transition table that sends the
  NOTIFY only if the statement inserted a row of a notifying tier, or of a tier the mirror does
  not know yet (the safe side). Every other row is found by the relay's main-lane poll
  (``relay_poll_interval_s``, 0.25 s by default).

Why: a NOTIFY makes every committing transaction take a cluster-wide lock at commit. Measured with
the single-row enqueue on 2 cores, 8 producers: 1,872 tx/s with the trigger firing on every insert
vs 2,075 with it off (bench/README.md). Non-urgent producers no longer pay that; urgent ones keep
millisecond wake-up.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

UPGRADE = r"""
ALTER TABLE outbox.tiers ADD COLUMN notify boolean NOT NULL DEFAULT true;
COMMENT ON COLUMN outbox.tiers.notify IS 'Inserting a pending row of this tier NOTIFYs the relay (urgent tiers).';
-- The rule of TierSpec.urgent (outbox/tiers.py, URGENT_SLO_S); tierbox migrate and the relay rewrite it from the topology.
UPDATE outbox.tiers SET notify = (slo_s IS NOT NULL AND slo_s <= 30);

DROP TRIGGER notify_pending ON outbox.pending;
CREATE OR REPLACE FUNCTION outbox.notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM inserted AS i LEFT JOIN outbox.tiers AS t ON t.name = i.tier
               WHERE t.notify IS DISTINCT FROM false) THEN
        PERFORM pg_notify('tierbox_pending', '');
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER notify_pending AFTER INSERT ON outbox.pending
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending();
"""

DOWNGRADE = r"""
DROP TRIGGER notify_pending ON outbox.pending;
CREATE OR REPLACE FUNCTION outbox.notify_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tierbox_pending', '');
    RETURN NULL;
END $$;
CREATE TRIGGER notify_pending AFTER INSERT ON outbox.pending
    FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_pending();
ALTER TABLE outbox.tiers DROP COLUMN notify;
"""


def upgrade() -> None:
    """Add tiers.notify and make the NOTIFY trigger urgency-aware."""
    op.execute(UPGRADE)


def downgrade() -> None:
    """NOTIFY on every insert again."""
    op.execute(DOWNGRADE)
