"""The workers' reads, each with what it is for (what they write is in ``outbox._transitions``)."""

from __future__ import annotations

from typing import NamedTuple

from outbox._sql import Statement

__all__ = ["DUE_SOON", "JOB_EXISTS", "PAUSES", "DueSoon", "Pause"]


class Pause(NamedTuple):
    """A pause in force: ``scope`` is ``tier`` or ``task``, ``name`` the tier's or task's name."""

    scope: str
    name: str


class DueSoon(NamedTuple):
    """Outbox rows of some tiers due within a horizon (see ``DUE_SOON``)."""

    rows: int


# Does the ledger hold this job (a dlq copy of a job that finished elsewhere is not a failure)?
JOB_EXISTS = Statement("worker.job_exists", """
SELECT 1 FROM outbox.jobs WHERE id = CAST(:job_id AS uuid)
""")


# The pauses in force (the workers' cache is refreshed from this every second).
PAUSES = Statement("worker.pauses", """
SELECT scope, name FROM outbox.pauses
""", row=Pause)

# A draining pool's outbox check (Pool.drain): rows of its tiers a relay will publish within
# :within_s (a job just enqueued, a retry due now or soon). A paused tier's rows are left out:
# the relay does not publish them, so waiting for them would never end.
DUE_SOON = Statement("worker.due_soon", """
SELECT count(*) FROM outbox.pending p
WHERE p.tier = ANY(CAST(:tiers AS text[]))
  AND p.available_at <= now() + make_interval(secs => CAST(:within_s AS float8))
  AND NOT EXISTS (SELECT 1 FROM outbox.pauses s WHERE s.scope = 'tier' AND s.name = p.tier)
""", row=DueSoon)
