"""Day partitions of the job history: created ahead of time, dropped by retention (revision 0017).

``outbox.jobs`` (on ``id``), ``outbox.attempts`` and ``outbox.job_events`` (on ``job_id``) have one
partition per UTC day, ``<table>_pYYYYMMDD``, whose bounds are the UUIDv7 of that midnight and of the
next (:func:`outbox._ids.floor_id`), plus a DEFAULT partition (``<table>_default``: the pre-0017 history,
and the safety net that takes any row whose day has no partition, so an insert never fails).

Creating a day must not stall enqueue. ``CREATE TABLE ... PARTITION OF`` takes ACCESS EXCLUSIVE on the
parent and on the default partition and scans the default for rows of the new range while holding them
(measured: 0.12 s per million default rows). :func:`ensure` instead, per table and day:

1. adds ``CHECK (NOT (key >= lo AND key < hi)) NOT VALID`` to the default (ACCESS EXCLUSIVE, no scan);
2. ``VALIDATE``\\s it: the scan, under SHARE UPDATE EXCLUSIVE, which blocks no read or write;
3. creates the empty partition and ``ATTACH``\\es it: SHARE UPDATE EXCLUSIVE on the parent, ACCESS
   EXCLUSIVE on the default for well under a millisecond (the validated CHECK proves the default holds
   no row of the range, so Postgres skips its scan), and drops the CHECK again.

Every lock is asked for with a short ``lock_timeout`` (:data:`LOCK_TIMEOUT_S`) and the step retried
(:data:`LOCK_TRIES`): behind a long transaction the step gives up and retries rather than queueing
every statement on the table behind its lock request; after the last try the pass gives up and the
next one (an hour later) carries on.

Rows already in the default inside a new day's range (uuid4 ids of pre-0017 jobs: about 3 per day per
10 M of them; or a day's v7 rows if no partition existed when they were written) cannot move. They are
found through the default's primary key (an index range scan) and the day is created as sub-ranges that
skip each of them (``_pYYYYMMDD_0``, ``_1``, ...); they stay in the default and are pruned by row
deletes. More than :data:`MAX_SKIPPED_IDS` of them (a day that ran without a partition): only the range
after the last one is created.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Iterable
from typing import Any

from psycopg import sql
from psycopg.errors import CheckViolation, DeadlockDetected, LockNotAvailable

from outbox import schema
from outbox._ids import floor_id

log = logging.getLogger("tierbox.partitions")

#: Partitioned tables and their partition key, in the order days are created; dropped in reverse.
TABLES = (("jobs", "id"), ("attempts", "job_id"), ("job_events", "job_id"))
#: Days created ahead of today by :func:`ensure` (``TIERBOX_PARTITION_DAYS_AHEAD``).
DAYS_AHEAD = 7
#: Days before today also ensured (a day whose partition a late pass can still create).
DAYS_BEHIND = 1
#: Rows of the default inside a new day's range that the day is split around, at most.
MAX_SKIPPED_IDS = 8
#: Longest wait for the locks of one partition change (lock_timeout), and how often it is tried
#: again, LOCK_RETRY_S apart, before the pass gives up (the next pass retries). Short on purpose:
#: while the request waits, every statement on the table queues behind it; and a job transaction
#: can hold a lock this change needs while waiting for one it holds (see _drop_day), which ends at
#: our lock_timeout, well before Postgres's deadlock_timeout (1 s) would abort the job's transaction.
LOCK_TIMEOUT_S = 0.1
LOCK_TRIES = 30
LOCK_RETRY_S = 0.2
#: lock_timeout of the VALIDATE scan (SHARE UPDATE EXCLUSIVE: it blocks no reader or writer).
VALIDATE_LOCK_TIMEOUT_S = 10.0
#: pg_try_advisory_lock key: one partition pass at a time across every process ("tbparts").
ADVISORY_KEY = 0x7462_7061_7274_73
#: Storage options of a jobs partition (the updates of a job stay HOT: see outbox.schema).
JOBS_STORAGE: dict[str, str] = schema.jobs.info["partition_storage"]

_NAME = re.compile(r"_p(\d{8})(?:_(\d+))?$")
_BOUNDS = re.compile(r"FROM \('([0-9a-f-]{36})'\) TO \('([0-9a-f-]{36})'\)")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One day partition (or piece of a day) of a partitioned table."""

    table: str
    name: str
    day: dt.date
    lo: uuid.UUID
    hi: uuid.UUID


@dataclasses.dataclass(frozen=True)
class Dropped:
    """A day whose partitions retention dropped: how many jobs, attempts and events went with it."""

    day: dt.date
    jobs: int
    partitions: tuple[str, ...]


def day_bounds(day: dt.date) -> tuple[uuid.UUID, uuid.UUID]:
    """The v7 id of ``day``'s midnight (UTC) and of the next: the day partition's range."""
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return floor_id(start), floor_id(start + dt.timedelta(days=1))


def is_partitioned(conn: Any) -> bool:
    """Whether ``outbox.jobs`` is partitioned (the schema is at revision 0017 or newer)."""
    row = conn.execute("SELECT relkind FROM pg_class WHERE oid = to_regclass('outbox.jobs')").fetchone()
    return row is not None and row[0] == "p"


def partitions(conn: Any, table: str = "jobs") -> list[Partition]:
    """The day partitions of ``outbox.<table>`` (not its default), oldest first."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = to_regclass(%s) ORDER BY 2", (f"outbox.{table}",)).fetchall()
    found = []
    for name, bound in rows:
        named, bounds = _NAME.search(name), _BOUNDS.search(bound or "")
        if named and bounds:
            day = dt.datetime.strptime(named.group(1), "%Y%m%d").date()
            found.append(Partition(table, name, day, uuid.UUID(bounds.group(1)), uuid.UUID(bounds.group(2))))
    return found


def ensure(conn: Any, days_ahead: int = DAYS_AHEAD, today: dt.date | None = None) -> list[str]:
    """Create the day partitions missing from yesterday to ``days_ahead`` days ahead; returns their names.

    ``conn``: a psycopg connection (autocommit off) that this commits, one short transaction per
    step. Returns ``[]`` without waiting when another process holds the pass (advisory lock) or the
    schema is older than revision 0017.
    """
    if not is_partitioned(conn):
        conn.rollback()
        return []
    if not conn.execute("SELECT pg_try_advisory_lock(%s)", (ADVISORY_KEY,)).fetchone()[0]:
        conn.rollback()
        return []
    try:
        conn.commit()
        _drop_leftover_checks(conn)
        today = today or dt.datetime.now(dt.UTC).date()
        created: list[str] = []
        for offset in range(-DAYS_BEHIND, days_ahead + 1):
            day = today + dt.timedelta(days=offset)
            try:
                created += create_day(conn, day)
            except LockNotAvailable:
                conn.rollback()
                _drop_leftover_checks(conn)
                log.warning("action=partitions.lock_timeout day=%s (retried on the next pass)", day)
        return created
    finally:
        conn.rollback()
        conn.execute("SELECT pg_advisory_unlock(%s)", (ADVISORY_KEY,))
        conn.commit()


def create_day(conn: Any, day: dt.date) -> list[str]:
    """Create ``day``'s partitions of every table that lacks them (split around rows of the default)."""
    lo, hi = day_bounds(day)
    missing = [(t, key) for t, key in TABLES if not any(p.day == day for p in partitions(conn, t))]
    conn.rollback()
    if not missing:
        return []
    for _ in range(3):
        # Every table's default, not only the missing ones': a day whose jobs partition exists skips the ids
        # its jobs default holds, and its attempts and events must skip them too (they go with their job).
        ranges = _ranges(lo, hi, *_default_ids(conn, TABLES, lo, hi))
        try:
            created = [name for t, key in missing for name in _attach(conn, t, key, day, ranges)]
        except CheckViolation:
            # A row of the range reached the default between the look-up and the validation: look again.
            conn.rollback()
            _drop_leftover_checks(conn)
            continue
        if created:
            log.info("action=partitions.created day=%s partitions=%s", day, ",".join(created))
        return created
    log.warning("action=partitions.skipped day=%s (rows kept arriving in the default; retried next pass)", day)
    return []


def _default_ids(conn: Any, tables: Iterable[tuple[str, str]], lo: uuid.UUID,
                 hi: uuid.UUID) -> tuple[list[uuid.UUID], uuid.UUID | None]:
    """Up to MAX_SKIPPED_IDS + 1 distinct keys the defaults hold in [lo, hi), and the largest."""
    found: set[uuid.UUID] = set()
    top: uuid.UUID | None = None
    for table, key in tables:
        # DISTINCT: attempts and events repeat a job id (an index-only skip over the primary key's prefix).
        q = sql.SQL("SELECT DISTINCT {k} FROM outbox.{d} WHERE {k} >= %s AND {k} < %s ORDER BY {k} {o} LIMIT %s")
        ident = {"k": sql.Identifier(key), "d": sql.Identifier(f"{table}_default")}
        found |= {r[0] for r in conn.execute(q.format(o=sql.SQL("ASC"), **ident), (lo, hi, MAX_SKIPPED_IDS + 1))}
        last = conn.execute(q.format(o=sql.SQL("DESC"), **ident), (lo, hi, 1)).fetchone()
        if last is not None and (top is None or last[0] > top):
            top = last[0]
    conn.rollback()
    return sorted(found), top


def _ranges(lo: uuid.UUID, hi: uuid.UUID, skip: list[uuid.UUID],
            top: uuid.UUID | None) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """[lo, hi) minus each id of ``skip``; only what follows ``top`` if there are too many to split around."""
    if len(skip) > MAX_SKIPPED_IDS:
        start = uuid.UUID(int=top.int + 1) if top is not None else lo
        return [(start, hi)] if start < hi else []
    ranges, cur = [], lo
    for s in skip:
        if cur < s:
            ranges.append((cur, s))
        cur = uuid.UUID(int=s.int + 1)
    if cur < hi:
        ranges.append((cur, hi))
    return ranges


def _attach(conn: Any, table: str, key: str, day: dt.date, ranges: list[tuple[uuid.UUID, uuid.UUID]]) -> list[str]:
    """Steps 1-3 of the module docstring for ``table``'s pieces of ``day``; returns the names created."""
    whole = len(ranges) == 1 and ranges[0] == day_bounds(day)
    names = [f"{table}_p{day:%Y%m%d}" if whole else f"{table}_p{day:%Y%m%d}_{i}" for i in range(len(ranges))]
    default, k = sql.Identifier(f"{table}_default"), sql.Identifier(key)

    def add_checks() -> None:
        for name, (lo, hi) in zip(names, ranges, strict=True):
            conn.execute(sql.SQL("ALTER TABLE outbox.{d} ADD CONSTRAINT {c} CHECK (NOT ({k} >= {lo} AND {k} < {hi})) "
                                 "NOT VALID").format(d=default, c=sql.Identifier(f"ck_not_{name}"), k=k,
                                                      lo=sql.Literal(str(lo)), hi=sql.Literal(str(hi))))

    _retrying(conn, add_checks)
    for name in names:  # the scan of the default: SHARE UPDATE EXCLUSIVE, DML goes on
        _lock_timeout(conn, VALIDATE_LOCK_TIMEOUT_S)
        conn.execute(sql.SQL("ALTER TABLE outbox.{d} VALIDATE CONSTRAINT {c}").format(
            d=default, c=sql.Identifier(f"ck_not_{name}")))
        conn.commit()
    storage: sql.Composable = sql.SQL("")
    if table == "jobs":
        storage = sql.SQL(" WITH ({})").format(sql.SQL(", ").join(
            sql.SQL("{} = {}").format(sql.Identifier(o), sql.Literal(v)) for o, v in JOBS_STORAGE.items()))

    def attach() -> None:
        for name, (lo, hi) in zip(names, ranges, strict=True):
            part = sql.Identifier(name)
            conn.execute(sql.SQL("CREATE TABLE outbox.{p} (LIKE outbox.{t} INCLUDING DEFAULTS INCLUDING "
                                 "CONSTRAINTS){s}").format(p=part, t=sql.Identifier(table), s=storage))
            conn.execute(sql.SQL("ALTER TABLE outbox.{t} ATTACH PARTITION outbox.{p} FOR VALUES FROM ({lo}) TO ({hi})")
                         .format(t=sql.Identifier(table), p=part, lo=sql.Literal(str(lo)), hi=sql.Literal(str(hi))))
            conn.execute(sql.SQL("ALTER TABLE outbox.{d} DROP CONSTRAINT {c}").format(
                d=default, c=sql.Identifier(f"ck_not_{name}")))

    _retrying(conn, attach)
    return names


def _retrying(conn: Any, step: Any) -> Any:
    """Run ``step()`` in a transaction with a short lock_timeout and commit; on a lock timeout roll back
    (releasing every lock it held) and try again, LOCK_TRIES times. Raises LockNotAvailable after."""
    for attempt in range(LOCK_TRIES):
        _lock_timeout(conn)
        try:
            result = step()
            conn.commit()
            return result
        except (LockNotAvailable, DeadlockDetected):
            conn.rollback()
            if attempt + 1 == LOCK_TRIES:
                raise
            time.sleep(LOCK_RETRY_S)
    raise AssertionError("unreachable")


def _drop_leftover_checks(conn: Any) -> None:
    """Drop ``ck_not_*`` CHECKs a pass left on a default partition (it died or timed out midway)."""
    rows = conn.execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint "
        "WHERE connamespace = 'outbox'::regnamespace AND contype = 'c' AND conname LIKE 'ck\\_not\\_%%'").fetchall()
    conn.rollback()
    for table, name in rows:
        _retrying(conn, lambda table=table, name=name: conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(sql.Identifier(*table.split(".")),
                                                                          sql.Identifier(name))))


def _lock_timeout(conn: Any, seconds: float = LOCK_TIMEOUT_S) -> None:
    conn.execute(sql.SQL("SET LOCAL lock_timeout = {}").format(sql.Literal(f"{int(seconds * 1000)}ms")))


# --- Retention -----------------------------------------------------------------------------------------

# Whether a jobs partition holds only jobs finished past retention, by three bounded index probes:
# an unfinished job (the partial index on tier WHERE finished_at IS NULL), the latest finish (the partial
# index on finished_at), and only if that is recent, the finished rows between the two cutoffs.
_UNFINISHED = "SELECT EXISTS (SELECT 1 FROM outbox.{p} WHERE finished_at IS NULL)"
_LATEST = "SELECT max(finished_at) FROM outbox.{p}"
_KEPT = """
SELECT EXISTS (
    SELECT 1 FROM outbox.{p}
    WHERE finished_at >= %(least)s
      AND NOT ((status IN ('succeeded', 'expired') AND finished_at < %(succeeded)s)
            OR (status IN ('dead', 'discarded') AND finished_at < %(dead)s)))
"""
# Rows that name a job of the dropped range and live outside the three partitioned tables' day
# partitions: deleted with the day (no foreign key cascades to them since revision 0017).
_DEPENDENTS = ("idempotency_keys", "webhooks", "republished", "pending", "leases", "attempts_default",
               "job_events_default")


def droppable(conn: Any, part: Partition, succeeded_before: dt.datetime, dead_before: dt.datetime) -> bool:
    """Whether every job of jobs partition ``part`` is finished past retention (an empty one is)."""
    p = sql.Identifier(part.name)
    if conn.execute(sql.SQL(_UNFINISHED).format(p=p)).fetchone()[0]:
        return False
    latest = conn.execute(sql.SQL(_LATEST).format(p=p)).fetchone()[0]
    least = min(succeeded_before, dead_before)
    if latest is None or latest < least:
        return True
    return not conn.execute(sql.SQL(_KEPT).format(p=p), {"least": least, "succeeded": succeeded_before,
                                                         "dead": dead_before}).fetchone()[0]


def drop_expired(conn: Any, succeeded_days: float, dead_days: float,
                 now: dt.datetime | None = None) -> list[Dropped]:
    """Detach and drop every day whose jobs are all finished past retention; returns what was dropped.

    A day is a candidate once it ended before the later cutoff (a job cannot finish before it was
    enqueued, so nothing of a younger day is past either); one unfinished or retained job keeps
    the whole day (its expired rows are then deleted row by row, as in the default partition). Each day
    goes in one transaction: its keys, webhooks and other dependents deleted, then its attempts, events
    and jobs partitions detached (ACCESS EXCLUSIVE on each parent, for milliseconds) and dropped.
    """
    if not is_partitioned(conn):
        conn.rollback()
        return []
    now = now or dt.datetime.now(dt.UTC)
    succeeded_before = now - dt.timedelta(days=succeeded_days)
    dead_before = now - dt.timedelta(days=dead_days)
    latest = max(succeeded_before, dead_before)
    by_day: dict[dt.date, list[Partition]] = {}
    for part in partitions(conn, "jobs"):
        by_day.setdefault(part.day, []).append(part)
    dropped: list[Dropped] = []
    for day, parts in sorted(by_day.items()):
        end = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC) + dt.timedelta(days=1)
        if end > latest:
            break  # this day and every later one holds jobs finished after both cutoffs (or none yet)
        if not all(droppable(conn, p, succeeded_before, dead_before) for p in parts):
            conn.rollback()
            continue
        jobs = sum(conn.execute(sql.SQL("SELECT count(*) FROM outbox.{}").format(sql.Identifier(p.name))).fetchone()[0]
                   for p in parts)
        conn.rollback()
        try:
            names = _drop_day(conn, day, parts)
        except LockNotAvailable:
            conn.rollback()
            log.warning("action=partitions.drop_lock_timeout day=%s (retried on the next prune)", day)
            continue
        log.info("action=partitions.dropped day=%s jobs=%d partitions=%s", day, jobs, ",".join(names))
        dropped.append(Dropped(day, jobs, tuple(names)))
    return dropped


def _drop_day(conn: Any, day: dt.date, jobs_parts: list[Partition]) -> list[str]:
    others = {t: [p for p in partitions(conn, t) if p.day == day] for t, _key in TABLES if t != "jobs"}
    conn.rollback()
    waited: list[float] = []

    def drop() -> list[str]:
        for part in jobs_parts:
            for table in _DEPENDENTS:
                conn.execute(sql.SQL("DELETE FROM ONLY outbox.{} WHERE job_id >= %s AND job_id < %s").format(
                    sql.Identifier(table)), (part.lo, part.hi))
        # Every lock DETACH takes, at once: the three parents and their defaults, in the order job
        # transactions take them (a job row, then its attempt or event). Holding attempts' lock while
        # waiting for jobs' made a worker holding a job row wait on attempts: a deadlock. Any remaining
        # cycle is ended on our side by the short lock_timeout, and _retrying tries again.
        asked = time.monotonic()
        conn.execute("LOCK TABLE ONLY outbox.jobs, outbox.jobs_default, ONLY outbox.attempts, "
                     "outbox.attempts_default, ONLY outbox.job_events, outbox.job_events_default "
                     "IN ACCESS EXCLUSIVE MODE")
        waited.append(time.monotonic() - asked)
        names = []
        for table, _key in TABLES:
            for part in jobs_parts if table == "jobs" else others[table]:
                conn.execute(sql.SQL("ALTER TABLE outbox.{} DETACH PARTITION outbox.{}").format(
                    sql.Identifier(table), sql.Identifier(part.name)))
                conn.execute(sql.SQL("DROP TABLE outbox.{}").format(sql.Identifier(part.name)))
                names.append(part.name)
        return names

    began = time.monotonic()
    names: list[str] = _retrying(conn, drop)
    log.info("action=partitions.drop_locks day=%s tries=%d took_ms=%.1f", day, len(waited),
             (time.monotonic() - began) * 1000)
    return names
