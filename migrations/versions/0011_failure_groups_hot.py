"""Failure groups updated in place (HOT): no index on ``last_seen``, room on each page, eager autovacuum.

Every failure updates its group's row, and a group is few rows updated very often. The quality
benchmark (bench/triage_quality.py, 10,000 dead letters) found 19,355 updates of 21 rows of which
only 684 were HOT: ``last_seen`` changes on every update and was indexed, so each update wrote new
index entries and left a dead row version (18,719 of them, 14 MiB for 21 live rows), and the
groups read took 275 ms until the table was analysed, 10 ms after. The index served only the
listing's ``ORDER BY last_seen DESC``, a sort of at most a few thousand rows. Without it, with a
fillfactor leaving room on each page and autovacuum/analyze scaled for a small hot table, the
updates can stay on their page.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01
"""

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STORAGE = ("fillfactor = 50, autovacuum_vacuum_scale_factor = 0.0, autovacuum_vacuum_threshold = 1000, "
            "autovacuum_analyze_scale_factor = 0.0, autovacuum_analyze_threshold = 1000")


def upgrade() -> None:
    """Drop the ``last_seen`` index; set the table's fillfactor and autovacuum thresholds."""
    op.execute("DROP INDEX IF EXISTS outbox.ix_failure_groups_last_seen")
    op.execute(f"ALTER TABLE outbox.failure_groups SET ({_STORAGE})")


def downgrade() -> None:
    """Back to revision 0010's index and default storage parameters."""
    op.execute("ALTER TABLE outbox.failure_groups RESET (fillfactor, autovacuum_vacuum_scale_factor, "
               "autovacuum_vacuum_threshold, autovacuum_analyze_scale_factor, autovacuum_analyze_threshold)")
    op.execute("CREATE INDEX ix_failure_groups_last_seen ON outbox.failure_groups (last_seen)")
