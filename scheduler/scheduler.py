"""The periodic scheduler: turns declared cron schedules into outbox jobs, exactly once per due run.

Correctness lives in Postgres, availability in Redis:

* Each due run is enqueued through :func:`outbox.enqueue` with ``run_at=due`` and the idempotency
  key ``schedule:{name}:{due in UTC}``, and ``outbox.schedules.last_due_at`` is advanced in the
  *same* transaction, guarded by ``WHERE last_due_at IS NOT DISTINCT FROM :previous``. Two
  schedulers ticking at once therefore enqueue a run once (the key), a crash between enqueue and
  advance loses nothing (they commit together), and a stale leader is harmless (its guard fails).
* Leadership only keeps the other schedulers idle. One process leads via a Redis lock:
  ``SET key token NX PX ttl``, renewed every ttl/3 by a compare-and-pexpire Lua script, released
  by compare-and-del. A standby polls every ``min(1 s, ttl/3)`` and takes over at most
  ``ttl + poll`` after the leader dies. A leader whose renewal fails stops ticking at once.

Why Redis and not a Postgres advisory lock: an advisory lock belongs to one database session.
A pooled or ``pg_terminate_backend``-ed connection drops it silently, and the holder only
notices on its next query; a half-open TCP connection can keep it for the kernel's keepalive
time, so takeover has no bound we control. A Redis key with a TTL expires on its own: the
takeover bound is the TTL, whatever happened to the old leader's sockets.

Redis unreachable: the scheduler logs ``scheduler.redis_unreachable`` at ERROR and does not
tick. Ticking without the lock would still be exactly-once (the guard and key are in Postgres),
but every process would then race on every run; we prefer a schedule that fires late and loud.
When Redis is back the misfire policy decides what the outage missed (``latest``: one run).

Runs whose expiry (due + the task's ``expires``) has passed are skipped rather than enqueued;
a run enqueued in time but not started before its expiry is marked expired by the relay or the
worker and never executed.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import cronsim
import msgspec
import psycopg
import redis

from outbox import _keepalive as keepalive
from outbox._logs import event
from outbox._sql import run
from outbox.enqueue import enqueue
from outbox.errors import InvalidScheduleError, RegistryError
from outbox.flow import Schedule
from outbox.registry import Registry, Task, registry
from tierbox.scheduler import queries as q

log = logging.getLogger("tierbox.scheduler")

#: Lifetime of the leader lock, seconds; renewed every third of it.
DEFAULT_LOCK_TTL_S = 10.0
#: Longest sleep between two ticks, seconds (shorter when a run is due sooner).
DEFAULT_TICK_S = 1.0
#: Under ``misfire="none"`` a run still counts as on time this long after it was due, seconds.
DEFAULT_GRACE_S = 2.0
#: Most runs one schedule enqueues per tick under ``misfire="all"`` (the rest follow next tick).
MAX_RUNS_PER_TICK = 1000
#: Slack added when sleeping until a due time, so the wake-up is not a hair early.
WAKE_SLACK_S = 0.005

_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


class Declared(msgspec.Struct, frozen=True):
    """A schedule as declared in code: its name, its task and the cron rule."""

    name: str
    task: Task
    schedule: Schedule

    @property
    def expires_s(self) -> float:
        """The run's lifetime after its due time (mandatory for scheduled tasks)."""
        return float(self.task.expires_s or 0.0)


def declared(reg: Registry | None = None) -> list[Declared]:
    """Every scheduled task of ``reg`` (default: the global registry), by schedule name."""
    found: dict[str, Declared] = {}
    # Registry.__iter__ is annotated as returning an Iterable, not an Iterator: call it explicitly.
    for t in (reg if reg is not None else registry).__iter__():
        if t.schedule is None:
            continue
        name = t.schedule.name or t.name
        if name in found:
            raise RegistryError(f"schedule name {name!r} is declared by {found[name].task.name!r} and {t.name!r}")
        found[name] = Declared(name, t, t.schedule)
    return sorted(found.values(), key=lambda d: d.name)


def latest_due(schedule: Schedule, at: dt.datetime) -> dt.datetime:
    """The most recent due time at or before ``at``, in UTC.

    Due times leave this module in UTC: Python compares and subtracts two datetimes of the same
    zone by wall clock, which is wrong across a DST fold (02:30 CEST and 02:30 CET look equal).
    """
    # cronsim's reverse iteration is strictly before its start unless the start has microseconds.
    start = (at + dt.timedelta(microseconds=1)).astimezone(schedule.zone())
    return next(cronsim.CronSim(schedule.expr, start, reverse=True)).astimezone(dt.UTC)


def dues_between(schedule: Schedule, after: dt.datetime, until: dt.datetime) -> Iterator[dt.datetime]:
    """Due times in ``(after, until]``, oldest first, in UTC."""
    for local in cronsim.CronSim(schedule.expr, after.astimezone(schedule.zone())):
        due = local.astimezone(dt.UTC)
        if due > until:
            return
        yield due


def runs_to_enqueue(schedule: Schedule, anchor: dt.datetime, now: dt.datetime,
                    grace_s: float = DEFAULT_GRACE_S) -> tuple[list[dt.datetime], dt.datetime | None]:
    """``(runs, advance_to)`` for the window ``(anchor, now]`` under the schedule's misfire policy.

    ``advance_to`` is the new ``last_due_at`` (None when nothing fell due). ``latest`` keeps only
    the most recent run, ``none`` keeps it only if it is within ``grace_s`` of ``now``, ``all``
    keeps every run (at most :data:`MAX_RUNS_PER_TICK`; the window then ends at the last kept).
    """
    latest = latest_due(schedule, now)
    if latest <= anchor:
        return [], None
    if schedule.misfire == "latest":
        return [latest], latest
    if schedule.misfire == "none":
        return ([latest] if (now - latest).total_seconds() <= grace_s else []), latest
    runs = []
    for due in dues_between(schedule, anchor, now):
        runs.append(due)
        if len(runs) >= MAX_RUNS_PER_TICK:
            break
    return runs, runs[-1]


def idempotency_key(name: str, due: dt.datetime) -> str:
    """The run's key: the same for every scheduler, whatever zone it computed ``due`` in."""
    return f"schedule:{name}:{due.astimezone(dt.UTC).isoformat()}"


class FencedError(Exception):
    """Another scheduler advanced the schedule first; this transaction is rolled back."""


def leader_key(key_prefix: str) -> str:
    """The Redis key of the leader lock (the admin API and dashboard read who holds it)."""
    return f"{key_prefix}tierbox:scheduler:leader"


class Scheduler:
    """Enqueues due runs of declared schedules (``tick``) while it leads (``run``)."""

    def __init__(self, database_url: str, *, redis_url: str, registry_: Registry | None = None,
                 key_prefix: str = "", lock_ttl_s: float = DEFAULT_LOCK_TTL_S, tick_s: float = DEFAULT_TICK_S,
                 grace_s: float = DEFAULT_GRACE_S) -> None:
        self.database_url = database_url
        self.registry = registry_
        self.lock_ttl_s = lock_ttl_s
        self.tick_s = tick_s
        self.grace_s = grace_s
        self.poll_s = min(tick_s, lock_ttl_s / 3)
        self.lock_key = leader_key(key_prefix)
        self.token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Socket timeouts below the renew period: a stalled Redis cannot keep a leader ticking past its TTL.
        timeout_s = max(0.1, lock_ttl_s / 6)
        self.redis = redis.Redis.from_url(redis_url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
        self._renew = self.redis.register_script(_RENEW)
        self._release = self.redis.register_script(_RELEASE)
        self.leading = False
        self._valid_until = 0.0
        self._renew_at = 0.0
        self._next_due: dt.datetime | None = None
        self._conn: psycopg.Connection[Any] | None = None

    # ------------------------------------------------------------------ ticking

    def tick(self, now: dt.datetime | None = None) -> int:
        """Sync the declared schedules, enqueue every run due by ``now``; returns how many were enqueued."""
        now = now or dt.datetime.now(dt.UTC)
        conn = self._connection()
        schedules = declared(self.registry)
        with conn.transaction():
            for d in schedules:
                run(conn, q.UPSERT_SCHEDULE, {"name": d.name, "task": d.task.name, "cron": d.schedule.expr,
                                              "tz": d.schedule.tz, "expires_s": d.expires_s,
                                              "misfire": d.schedule.misfire})
            state = {r.name: r for r in run(conn, q.SCHEDULE_STATE, {"names": [d.name for d in schedules]})}
        enqueued = sum(self._tick_one(conn, d, state[d.name].anchor, state[d.name].last_due_at, now)
                       for d in schedules)
        self._next_due = min((d.schedule.next_after(now) for d in schedules), default=None)
        return enqueued

    def _tick_one(self, conn: psycopg.Connection[Any], d: Declared, anchor: dt.datetime,
                  previous: dt.datetime | None, now: dt.datetime) -> int:
        runs, advance_to = runs_to_enqueue(d.schedule, anchor, now, self.grace_s)
        live = [due for due in runs if (now - due).total_seconds() < d.expires_s]
        for due in runs[: len(runs) - len(live)]:  # dues are ordered, so the expired ones come first
            event(log, "scheduler.run_expired", logging.WARNING, schedule=d.name, due=due.isoformat())
        steps: list[tuple[dt.datetime, bool]] = [(due, True) for due in live]
        if advance_to is not None and (not live or live[-1] != advance_to):
            steps.append((advance_to, False))  # move past skipped runs without enqueueing them
        done = 0
        try:
            for due, enqueue_it in steps:
                done += self._commit_run(conn, d, due, previous, enqueue_it)
                previous = due
        except FencedError:
            event(log, "scheduler.fenced", schedule=d.name, due=previous.isoformat() if previous else None)
        return done

    def _commit_run(self, conn: psycopg.Connection[Any], d: Declared, due: dt.datetime,
                    previous: dt.datetime | None, enqueue_it: bool) -> int:
        """Enqueue one run and advance the schedule past it, in one transaction."""
        with conn.transaction():
            job_id = self._enqueue(conn, d, due) if enqueue_it else None
            advanced = run(conn, q.ADVANCE, {"name": d.name, "due": due, "job_id": job_id, "previous": previous})
            if not advanced:
                raise FencedError(d.name)  # leaving the block rolls the enqueue back
        if job_id is not None:
            event(log, "scheduler.enqueued", job_id=job_id, schedule=d.name, task=d.task.name,
                  due=due.isoformat())
        return int(job_id is not None)

    def _enqueue(self, conn: psycopg.Connection[Any], d: Declared, due: dt.datetime) -> uuid.UUID | None:
        try:
            return enqueue(conn, d.task, run_at=due, idempotency_key=idempotency_key(d.name, due))
        except InvalidScheduleError:  # expired between the check and now: validated before any SQL ran
            event(log, "scheduler.run_expired", logging.WARNING, schedule=d.name, due=due.isoformat())
            return None

    def _connection(self) -> psycopg.Connection[Any]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            # Autocommit, so each ``transaction()`` block is a real BEGIN/COMMIT, not a savepoint.
            self._conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=5)
            keepalive.apply(self._conn)  # a cut-off leader's transaction frees its rows (outbox._keepalive)
        return self._conn

    # ------------------------------------------------------------------ leadership

    def hold_leadership(self) -> bool:
        """Acquire or renew the leader lock; False (and not leading) when it is lost or Redis fails."""
        started = time.monotonic()
        try:
            if not self.leading:
                if self.redis.set(self.lock_key, self.token, nx=True, px=int(self.lock_ttl_s * 1000)):
                    self._leased(started)
                    event(log, "scheduler.leader_elected", token=self.token, ttl_s=self.lock_ttl_s)
            elif started >= self._renew_at:
                if self._renew(keys=[self.lock_key], args=[self.token, int(self.lock_ttl_s * 1000)]) == 1:
                    self._leased(started)
                else:
                    self._lose("lock held by another scheduler")
        except redis.RedisError as exc:
            event(log, "scheduler.redis_unreachable", logging.ERROR, error=f"{type(exc).__name__}: {exc}",
                  consequence="not ticking until Redis answers")
            self._lose("redis unreachable")
        if self.leading and time.monotonic() >= self._valid_until:
            self._lose("lease ran out before it was renewed")
        return self.leading

    def _leased(self, started: float) -> None:
        # Count validity from before the call: the lock may have been set at any moment of it.
        self.leading = True
        self._valid_until = started + self.lock_ttl_s
        self._renew_at = started + self.lock_ttl_s / 3

    def _lose(self, why: str) -> None:
        if self.leading:
            event(log, "scheduler.leadership_lost", logging.WARNING, token=self.token, why=why)
        self.leading = False

    def release(self) -> None:
        """Give the lock up (only if still ours), so a standby takes over at once."""
        if self.leading:
            try:
                self._release(keys=[self.lock_key], args=[self.token])
            except redis.RedisError:
                pass  # it expires by itself within the TTL
        self.leading = False

    # ------------------------------------------------------------------ the loop

    def step(self) -> float:
        """One pass of :meth:`run`: lead or stand by, tick if leading; returns seconds to sleep."""
        if not self.hold_leadership():
            return self.poll_s
        try:
            self.tick()
        except (psycopg.Error, OSError) as exc:
            event(log, "scheduler.tick_failed", logging.WARNING, error=f"{type(exc).__name__}: {exc}")
            return self.poll_s
        return self._sleep_s()

    def _sleep_s(self) -> float:
        sleep = min(self.tick_s, max(0.0, self._renew_at - time.monotonic()))
        if self._next_due is not None:
            until_due = (self._next_due - dt.datetime.now(dt.UTC)).total_seconds() + WAKE_SLACK_S
            sleep = min(sleep, max(0.0, until_due))
        return sleep

    def run(self, stop: threading.Event) -> None:
        """Tick about every second while leading, until ``stop`` is set; then release the lock."""
        event(log, "scheduler.started", token=self.token, schedules=len(declared(self.registry)),
              ttl_s=self.lock_ttl_s)
        try:
            while not stop.is_set():
                stop.wait(self.step())
        finally:
            self.release()
            if self._conn is not None:
                self._conn.close()
            event(log, "scheduler.stopped", token=self.token)
