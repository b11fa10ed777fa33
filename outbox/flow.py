"""Declarations of time and flow control attached to a task: schedules, rate limits, breaker policies.

These are plain data. The scheduler (``relay.scheduler``) and the worker's flow gate
(``workers.gate``) act on them; this module only parses and validates, so a bad
declaration fails at import with a :class:`~outbox.errors.RegistryError`.
"""

from __future__ import annotations

import datetime as dt
import re
import zoneinfo
from typing import Literal

import cronsim
import msgspec

from outbox.errors import RegistryError

Misfire = Literal["latest", "all", "none"]
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|m|min|h|hour)\s*$")
_PERIOD_S = {"s": 1.0, "sec": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "hour": 3600.0}


class Schedule(msgspec.Struct, frozen=True, kw_only=True):
    """A cron schedule: ``expr`` in ``tz`` (DST-correct), with a misfire policy after downtime.

    ``misfire``: ``latest`` (default) enqueues only the most recent missed run, ``all`` every
    missed run, ``none`` skips missed runs and waits for the next one.
    """

    expr: str
    tz: str = "UTC"
    misfire: Misfire = "latest"
    name: str | None = None

    def zone(self) -> zoneinfo.ZoneInfo:
        """The schedule's time zone."""
        return zoneinfo.ZoneInfo(self.tz)

    def next_after(self, after: dt.datetime) -> dt.datetime:
        """The first due time strictly after ``after`` (aware, in the schedule's zone)."""
        it = cronsim.CronSim(self.expr, after.astimezone(self.zone()))
        return next(it)


def cron(expr: str, *, tz: str = "UTC", misfire: Misfire = "latest", name: str | None = None) -> Schedule:
    """A validated :class:`Schedule`: ``@outbox.task(schedule=cron("*/5 * * * *"), expires=180)``."""
    try:
        zoneinfo.ZoneInfo(tz)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError) as exc:
        raise RegistryError(f"schedule tz {tz!r} is not a known time zone") from exc
    try:
        cronsim.CronSim(expr, dt.datetime.now(dt.UTC))
    except cronsim.CronSimError as exc:
        raise RegistryError(f"schedule {expr!r} is not a valid cron expression: {exc}") from exc
    if misfire not in ("latest", "all", "none"):
        raise RegistryError(f"schedule misfire must be latest, all or none, got {misfire!r}")
    return Schedule(expr=expr, tz=tz, misfire=misfire, name=name)


class RateLimit(msgspec.Struct, frozen=True):
    """``count`` jobs per ``period_s`` seconds (parsed from ``"100/s"``, ``"10/m"``, ``"5/h"``)."""

    count: float
    period_s: float

    @property
    def interval_s(self) -> float:
        """Seconds between two jobs at the limit (the GCRA emission interval)."""
        return self.period_s / self.count


def parse_rate(text: str, field: str = "rate_limit") -> RateLimit:
    """Parse ``"N/s"``, ``"N/m"``, ``"N/h"`` (also ``"N/10s"``); raises RegistryError naming ``field``."""
    match = _RATE.match(text) if isinstance(text, str) else None
    if not match or float(match.group(1)) <= 0:
        raise RegistryError(f"{field}: {text!r} is not a rate like '100/s', '10/m' or '5/h'")
    multiple = float(match.group(2) or 1)
    return RateLimit(float(match.group(1)), multiple * _PERIOD_S[match.group(3)])


class BreakerPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """When a circuit breaker opens and how it recovers. Every field has the documented default."""

    #: Failures within ``window_s`` that open the breaker. Defaults to 5.
    threshold: int = 5
    #: Sliding window for counting failures, seconds. Defaults to 30.
    window_s: float = 30.0
    #: How long the breaker stays open before half-opening, seconds. Defaults to 30.
    open_s: float = 30.0
    #: Probe jobs admitted at once while half-open. Defaults to 1.
    probes: int = 1
    #: Deferral of a job refused because the probes are busy, seconds. Defaults to 1.
    probe_retry_s: float = 1.0


#: The policy of every breaker that is named by a task but not declared with :func:`breaker_policy`.
DEFAULT_BREAKER_POLICY = BreakerPolicy()


def breaker_policy(*, threshold: int = 5, window_s: float = 30.0, open_s: float = 30.0, probes: int = 1,
                   probe_retry_s: float = 1.0) -> BreakerPolicy:
    """A validated :class:`BreakerPolicy`; raises RegistryError naming the bad field."""
    for field, value, minimum in (("threshold", threshold, 1), ("probes", probes, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise RegistryError(f"breaker {field} must be an integer >= {minimum}, got {value!r}")
    for field, seconds in (("window_s", window_s), ("open_s", open_s), ("probe_retry_s", probe_retry_s)):
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 < seconds < float("inf"):
            raise RegistryError(f"breaker {field} must be a positive number of seconds, got {seconds!r}")
    return BreakerPolicy(threshold=threshold, window_s=float(window_s), open_s=float(open_s), probes=probes,
                         probe_retry_s=float(probe_retry_s))
