"""Every SQL statement of the flow gate, each with what it is for."""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from outbox._sql import Statement

__all__ = ["BREAKER_HISTORY", "INSERT_BREAKER_EVENT", "BreakerEventRow"]


class BreakerEventRow(NamedTuple):
    """``BREAKER_HISTORY``: one transition of a circuit breaker."""

    from_state: str
    to_state: str
    at: dt.datetime
    failures: int
    detail: str | None


# One breaker transition, stamped with the Redis time of the transition (not the insert's), so
# events inserted by different workers still sort in the order Redis applied them.
INSERT_BREAKER_EVENT = Statement("gate.insert_breaker_event", """
INSERT INTO outbox.breaker_events (breaker, from_state, to_state, at, failures, detail)
VALUES (:breaker, :from_state, :to_state, :at, :failures, :detail)
""")

# A breaker's transitions, oldest first (admin API history, tests).
BREAKER_HISTORY = Statement("gate.breaker_history", """
SELECT from_state, to_state, at, failures, detail
FROM outbox.breaker_events
WHERE breaker = :breaker
ORDER BY at, id
""", row=BreakerEventRow)
