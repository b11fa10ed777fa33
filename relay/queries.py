"""Every SQL statement of the relay, each with what it is for."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import NamedTuple

from outbox._sql import Statement


class NextDueRow(NamedTuple):
    """``NEXT_DUE_IN``: seconds until the lane's earliest pending row is due (None: nothing pending)."""

    due_in_s: float | None


class LagRow(NamedTuple):
    """``LAG``: one tier's due rows not yet published and the age of the oldest."""

    tier: str
    due: int
    oldest_s: float


# When the lane's next delayed row becomes due (the lane sleeps until then at most).
NEXT_DUE_IN = Statement("relay.next_due_in", """
SELECT EXTRACT(EPOCH FROM (min(available_at) - now()))::float8 FROM outbox.pending
WHERE weight >= CAST(:min_weight AS smallint)
  AND NOT EXISTS (SELECT 1 FROM outbox.pauses AS ps WHERE ps.scope = 'tier' AND ps.name = pending.tier)
""", row=NextDueRow)

# Relay lag per tier: due rows waiting and the age of the oldest.
LAG = Statement("relay.lag", """
SELECT tier, count(*), EXTRACT(EPOCH FROM (now() - min(available_at)))::float8
FROM outbox.pending WHERE available_at <= now()
GROUP BY tier
""", row=LagRow)


class LockRow(NamedTuple):
    """``RECONCILE_LOCK``: whether this transaction now holds the reconciliation lock."""

    taken: bool


class NowRow(NamedTuple):
    """``DB_NOW``: Postgres's clock, the cut of a reconciliation round."""

    now: dt.datetime


class OwedRow(NamedTuple):
    """``OWED``: a tier's jobs published before the cut and not started, and how many a pool holds."""

    owed: int
    held: int


class CandidateRow(NamedTuple):
    """``CANDIDATES``: an owed job past its grace that no pool holds, oldest first."""

    job_id: uuid.UUID
    published_at: dt.datetime


# One reconciler at a time across every relay: held until the round's transaction ends.
RECONCILE_LOCK = Statement("relay.reconcile_lock", """
SELECT pg_try_advisory_xact_lock(hashtext(CAST(:key AS text)))
""", row=LockRow)

# The round's cut, read just before the broker's counts: only jobs published before it are owed.
DB_NOW = Statement("relay.db_now", "SELECT clock_timestamp()", row=NowRow)

# Jobs of the tier published (confirmed and committed) before the cut and not started, through
# ix_jobs_unfinished_tier; those with a pending row (republished, or deferred by a worker) are on
# their way through the outbox and not owed. held: those a worker pool holds delivered, unstarted.
# Jobs of an outbox.celery_task are not owed by the tier's queue: they wait in a Celery queue, which
# the round does not count (every one would look lost, and be republished each grace period).
OWED = Statement("relay.owed", """
SELECT count(*), count(*) FILTER (WHERE j.id = ANY(CAST(:inflight AS uuid[])))
FROM outbox.jobs AS j
WHERE j.tier = CAST(:tier AS text) AND j.finished_at IS NULL AND j.status = 'published'
  AND j.published_at < CAST(:cut AS timestamptz)
  AND NOT EXISTS (SELECT 1 FROM outbox.pending AS p WHERE p.job_id = j.id)
  AND NOT (j.headers ? 'x-tierbox-celery-queue')
""", row=OwedRow)

# The oldest owed jobs of the tier published longer ago than its grace that no pool holds.
CANDIDATES = Statement("relay.reconcile_candidates", """
SELECT j.id, j.published_at
FROM outbox.jobs AS j
WHERE j.tier = CAST(:tier AS text) AND j.finished_at IS NULL AND j.status = 'published'
  AND j.published_at < CAST(:cut AS timestamptz) - make_interval(secs => CAST(:grace_s AS float8))
  AND NOT (j.id = ANY(CAST(:inflight AS uuid[])))
  AND NOT EXISTS (SELECT 1 FROM outbox.pending AS p WHERE p.job_id = j.id)
  AND NOT (j.headers ? 'x-tierbox-celery-queue')
ORDER BY j.published_at, j.id
LIMIT :limit
""", row=CandidateRow)


# --- Broker blocks (outbox.relay_blocks): what tier_health's publishing_blocked reads -----------------

# A lane the broker blocks says so, and refreshes seen_at while the block lasts: a row no one refreshes
# (its relay was killed while blocked) stops counting after 30 s. ``since`` keeps the block's start.
BLOCK_SEEN = Statement("relay.block_seen", """
INSERT INTO outbox.relay_blocks (relay_id, lane, since, seen_at)
VALUES (CAST(:relay_id AS text), CAST(:lane AS text), now(), now())
ON CONFLICT (relay_id, lane) DO UPDATE SET seen_at = now()
""")

# The block is over (unblocked, connection lost, or the relay stops).
BLOCK_CLEARED = Statement("relay.block_cleared", """
DELETE FROM outbox.relay_blocks WHERE relay_id = CAST(:relay_id AS text) AND lane = CAST(:lane AS text)
""")
