"""Circuit breakers' shared vocabulary: transition events, their history sink, and the state report.

The breakers themselves run in :class:`tierbox.flow.gate.Gate` (Lua scripts on Redis, so every
worker of a cluster sees one state); this module holds what the gate hands out about them: each
transition as a :class:`BreakerEvent` (recorded in ``outbox.breaker_events``) and the effective
state of a breaker as operators see it (``/admin/breakers``, ``tierbox tiers``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox._sql import run_async
from tierbox.flow.queries import INSERT_BREAKER_EVENT

_US = 1_000_000


class BreakerEvent(msgspec.Struct, frozen=True):
    """One breaker transition, as recorded in ``outbox.breaker_events``."""

    breaker: str
    from_state: str
    to_state: str
    at: dt.datetime
    failures: int
    detail: str


EventSink = Callable[[BreakerEvent], Awaitable[None]]

_DETAILS = {
    ("closed", "open"): "failure threshold reached",
    ("open", "half_open"): "open period over",
    ("half_open", "closed"): "probe succeeded",
    ("half_open", "open"): "probe failed",
}


def engine_sink(engine: AsyncEngine) -> EventSink:
    """An event sink inserting each transition in its own short transaction."""

    async def insert(event: BreakerEvent) -> None:
        async with engine.begin() as conn:
            await run_async(conn, INSERT_BREAKER_EVENT, msgspec.structs.asdict(event))

    return insert


def transitions(name: str, now_us: Any, flat: list[Any]) -> list[BreakerEvent]:
    """Decode the scripts' ``from, to, failures, ...`` triples into events."""
    at = dt.datetime.fromtimestamp(int(now_us) / _US, dt.UTC)
    out = []
    for i in range(0, len(flat), 3):
        src, dst = text(flat[i]), text(flat[i + 1])
        out.append(BreakerEvent(name, src, dst, at, int(flat[i + 2]), _DETAILS.get((src, dst), "")))
    return out


def state_view(fields: dict[bytes, bytes], failures: int, now_us: int, window_us: int,
               threshold: int) -> dict[str, Any]:
    """A breaker's effective state from its Redis hash: an open breaker past its open period reads
    ``half_open`` even before a job has made (and recorded) that transition."""
    state = text(fields.get(b"state", b"closed"))
    until_us = int(fields.get(b"until", b"0"))
    if state == "open" and now_us >= until_us:
        state = "half_open"
    reopens = (until_us - now_us) / _US if state == "open" else 0.0
    return {"state": state, "failures": int(failures), "threshold": threshold, "window_s": window_us / _US,
            "half_opens_in_s": reopens}


def text(value: Any) -> str:
    """A Redis reply (bytes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
