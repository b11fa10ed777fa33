"""``tier_health``: the wait p99 the SLO is judged on, and the start rate of the last minute.

The dashboard's Tiers screen shows, per tier, the wait p99 against the SLO and how many jobs start
per second; the view had p50 and p95 only and no start count. Two columns appended
(``CREATE OR REPLACE VIEW`` may only append):

``wait_p99_s``
    99th percentile of first-attempt waits (start minus due time) over the same 15 minutes as
    ``wait_p50_s`` and ``wait_p95_s``.
``started_1m``
    Attempts started in the last minute (every attempt, retries included: what the pools did), read
    through ``ix_attempts_started_at``; ``started_1m / 60`` is the start rate.

``slo_breached`` is now judged on the p99 (it was the p95): a tier whose one job in a hundred waits
past its SLO is breaching it, which the p95 hid. The oldest-due-row half is unchanged.

Revision ID: 0016
Revises: 0013
Create Date: 2026-12-01
"""

import importlib

from alembic import op

revision = "0016"
down_revision = "0013"
branch_labels = None
depends_on = None


def _tier_health_0008() -> str:
    """Revision 0008's ``outbox.tier_health`` (its CREATE OR REPLACE VIEW and COMMENT statements)."""
    module = importlib.import_module("tierbox.migrations.versions.0008_relay_blocked")
    view: str = module._tier_health_0008()
    return view


def _replace_once(text: str, old: str, new: str) -> str:
    if text.count(old) != 1:
        raise LookupError(f"revision 0008's tier_health is not the one this revision extends (at {old!r})")
    return text.replace(old, new)


def _tier_health_0016() -> str:
    """0008's view with the p99 wait, the starts of the last minute, and the breach judged on the p99."""
    view = _tier_health_0008()
    view = _replace_once(
        view, "percentile_cont(0.95) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p95_s\n",
        "percentile_cont(0.95) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p95_s,\n"
        "           percentile_cont(0.99) WITHIN GROUP (ORDER BY w.wait_s) AS wait_p99_s\n")
    view = _replace_once(
        view, "), repub AS (\n",
        "), starts AS (\n"
        "    SELECT j.tier, count(*) AS started_1m\n"
        "    FROM outbox.attempts a JOIN outbox.jobs j ON j.id = a.job_id\n"
        "    WHERE a.started_at >= now() - interval '1 minute' GROUP BY j.tier\n"
        "), repub AS (\n")
    view = _replace_once(view, "OR COALESCE(w.wait_p95_s, 0) > t.slo_s))", "OR COALESCE(w.wait_p99_s, 0) > t.slo_s))")
    view = _replace_once(
        view, " AS publishing_blocked\n",
        " AS publishing_blocked,\n"
        "       w.wait_p99_s, COALESCE(st.started_1m, 0) AS started_1m\n")
    view = _replace_once(view, "LEFT JOIN repub r ON r.tier = t.name;",
                         "LEFT JOIN repub r ON r.tier = t.name\nLEFT JOIN starts st ON st.tier = t.name;")
    view = _replace_once(view, "SLO breach, oldest", "SLO breach (oldest due row or p99 wait above slo_s), oldest")
    return _replace_once(view, "every relay lane publishes to every tier it claims).';",
                         "every relay lane publishes to every tier it claims), wait_p99_s, "
                         "started_1m (attempts started in the last minute).';")


def upgrade() -> None:
    """Append ``wait_p99_s`` and ``started_1m`` to ``tier_health``; judge the SLO on the p99."""
    op.execute(_tier_health_0016())


def downgrade() -> None:
    """Restore revision 0008's view (columns cannot be dropped in place)."""
    op.execute("DROP VIEW outbox.tier_health")
    op.execute(_tier_health_0008())
