"""Every SQL statement of the relay, each with what it is for."""

from __future__ import annotations

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
