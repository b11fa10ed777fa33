"""Relay blocks: which relays the broker blocks now (a memory or disk alarm), and ``tier_health`` shows it.

RabbitMQ blocks a publishing connection (``connection.blocked``) while a memory or disk alarm is on.
The relay then holds its rows pending (``tierbox.relay.Relay.hold_while_blocked``); only its own
``--metrics-port`` knew. Now each blocked relay lane keeps a row here, so every reader of
``tier_health`` (the admin API's ``/metrics``, ``tierbox tiers``) sees it too.

``outbox.relay_blocks``
    One row per blocked relay lane: ``relay_id`` (``hostname:pid``), ``lane`` (``main`` or
    ``urgent``), ``since`` (when the block began) and ``seen_at`` (refreshed about every second
    while the block lasts). The relay deletes its row when unblocked or on exit; a relay killed
    while blocked leaves a row that stops being refreshed, and the view ignores it after 30 s.
``tier_health``
    One column appended (``CREATE OR REPLACE VIEW`` may only append): ``publishing_blocked``, true
    while some relay row was seen within the last 30 s. The same for every tier: a block is per
    connection, and every lane publishes to every tier it claims.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-01
"""

import importlib

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

#: Seconds after its last refresh that a relay's row stops counting (the relay refreshes it every second).
STALE_AFTER_S = 30

TABLE = """
CREATE TABLE outbox.relay_blocks (
    relay_id text        NOT NULL,
    lane     text        NOT NULL,
    since    timestamptz NOT NULL DEFAULT now(),
    seen_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_relay_blocks PRIMARY KEY (relay_id, lane)
);
COMMENT ON TABLE outbox.relay_blocks IS 'One row per relay lane the broker blocks now (connection.blocked: a memory or disk alarm); stale after 30 s without a refresh.';
"""


def _tier_health_0007() -> str:
    """Revision 0007's ``outbox.tier_health`` (its CREATE OR REPLACE VIEW and COMMENT statements)."""
    view: str = importlib.import_module("tierbox.migrations.versions.0007_reconciliation").TIER_HEALTH
    return view


def _tier_health_0008() -> str:
    """0007's view with ``publishing_blocked`` appended and the comment extended."""
    old = _tier_health_0007()
    select_end = "COALESCE(r.republished_1h, 0) AS republished_1h\n"
    comment_end = "republished in 1 h.';"
    if old.count(select_end) != 1 or old.count(comment_end) != 1:
        raise LookupError("revision 0007's tier_health is not the one this revision extends")
    # A scalar subquery, not a join: one answer for every tier. A block is per AMQP connection and
    # each relay lane publishes to every tier it claims, so no tier escapes a blocked relay.
    blocked = (f"COALESCE(r.republished_1h, 0) AS republished_1h,\n"
               f"       EXISTS (SELECT 1 FROM outbox.relay_blocks b\n"
               f"               WHERE b.seen_at >= now() - interval '{STALE_AFTER_S} seconds') AS publishing_blocked\n")
    comment = ("republished in 1 h, publishing_blocked (some relay is blocked by a broker alarm: the same for "
               "every tier, as a block is per connection and every relay lane publishes to every tier it claims).';")
    return old.replace(select_end, blocked).replace(comment_end, comment)


def upgrade() -> None:
    """Create ``outbox.relay_blocks`` and append ``publishing_blocked`` to ``tier_health``."""
    op.execute(TABLE)
    op.execute(_tier_health_0008())


def downgrade() -> None:
    """Restore revision 0007: its ``tier_health`` (a column cannot be dropped in place), then drop the table."""
    op.execute("DROP VIEW outbox.tier_health")
    op.execute(_tier_health_0007())
    op.execute("DROP TABLE outbox.relay_blocks")
