"""Actions on a whole failure group: dry run, paced redrive, discard, resolve / ignore / reopen (docs/triage.md).

The admin API (``/admin/failure-groups``) and the CLI (``tierbox dlq groups``) both call these. Each
change goes through a SQL function of revision 0010 (``outbox.redrive_group``, ``outbox.discard_group``,
``outbox.set_failure_group_status``) that writes its ``admin_audit`` row, naming the operator and the
fingerprint, in the transaction of the change. A refusal (no such group, nothing to redrive) is
audited here, in a transaction of its own, then raised.

A group redrive runs in batches, each one transaction: interrupted (a stop request, Ctrl-C, a lost
connection), it has redriven whole batches only, and running it again redrives the rest, each dead
letter once (a redriven dead letter is no longer open, and concurrent batches skip each other's rows).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Literal, get_args

import msgspec
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox import _transitions as transitions
from outbox._sql import run_async
from outbox.redrive import NOT_FOUND_SQLSTATE, REFUSED_SQLSTATE
from tierbox.ops import audit, queries, triage
from tierbox.ops.audit import Actor
from tierbox.ops.errors import RequestError, invalid
from tierbox.ops.models import Redriven

GroupStatus = Literal["open", "resolved", "ignored"]
GROUP_STATUSES: tuple[str, ...] = get_args(GroupStatus)
#: Dead letters per redrive batch (one transaction, one audit row) unless the caller says otherwise.
DEFAULT_BATCH = 100
#: Dead letters per discard batch.
DISCARD_BATCH = 1000


class UnknownGroupError(RequestError):
    """No failure group has this fingerprint (or a fingerprint starting with it)."""

    def __init__(self, fingerprint: str) -> None:
        super().__init__(404, f"no failure group {fingerprint[:64]!r}", field="fingerprint")


class AmbiguousFingerprintError(RequestError):
    """The prefix names more than one group."""

    def __init__(self, prefix: str, matches: list[str]) -> None:
        super().__init__(422, f"fingerprint: {prefix!r} is the start of several groups ({', '.join(matches)}, ...); "
                              "give more of it", field="fingerprint")


class BadGroupStatusError(RequestError):
    """A status other than open, resolved, ignored."""

    def __init__(self, status: str) -> None:
        super().__init__(422, f"status: {status[:64]!r} is not one of {', '.join(GROUP_STATUSES)}", field="status")


class NothingToRedriveError(RequestError):
    """The group has no open dead letter that a redrive can run."""

    def __init__(self, fingerprint: str, not_redrivable: int) -> None:
        extra = (f"; its {not_redrivable} open dead letter(s) hold no runnable job (discard them)"
                 if not_redrivable else "")
        super().__init__(409, f"failure group {fingerprint} has nothing to redrive{extra}", field="fingerprint")


class DryRun(msgspec.Struct, kw_only=True):
    """What a group redrive would take: the group's open dead letters, by tier and by task."""

    fingerprint: str
    open_dead_letters: int
    #: Those a redrive can run (a raw broker message without a job cannot be redriven, only discarded).
    redrivable: int
    not_redrivable: int
    #: Redrivable open dead letters per tier they failed in, and per task.
    by_tier: dict[str, int]
    by_task: dict[str, int]
    #: The tier the redriven jobs would go to (None: each its own).
    target_tier: str | None = None


class GroupRedriveResult(msgspec.Struct, kw_only=True):
    """What a group redrive did (or, as a dry run, would do)."""

    fingerprint: str
    dry_run: bool
    plan: DryRun
    redriven: int = 0
    #: Redrivable open dead letters left (after a stop or a limit, the rest to redrive later).
    remaining: int = 0
    batches: int = 0
    #: Stopped before the group was done (a stop request or the limit).
    stopped: bool = False
    jobs: list[Redriven] = msgspec.field(default_factory=list)


class GroupDiscardResult(msgspec.Struct, kw_only=True):
    """What a group discard did."""

    fingerprint: str
    discarded: int
    remaining: int
    batches: int


class GroupStatusResult(msgspec.Struct, kw_only=True):
    """A status change of a group."""

    fingerprint: str
    previous: str
    status: str
    status_at: dt.datetime


class SampleJob(msgspec.Struct, kw_only=True):
    """One of a group's sample jobs as the ledger holds it now."""

    job_id: uuid.UUID
    task: str
    tier: str
    status: str
    attempts: int
    last_error: str | None
    finished_at: dt.datetime | None


class GroupDetail(msgspec.Struct, kw_only=True):
    """A group, its evidence and verdict, and its sample jobs."""

    group: triage.Group
    evidence: triage.Evidence
    verdict: triage.Verdict
    sample_jobs: list[SampleJob]


#: ``progress(done, total)`` after every batch of a group redrive.
Progress = Callable[[int, int], None]
Sleep = Callable[[float], Awaitable[None]]


async def resolve(conn: Any, fingerprint: str) -> str:
    """The full fingerprint of the group ``fingerprint`` names exactly or as a unique prefix."""
    if not fingerprint or len(fingerprint) > 200:
        raise invalid("fingerprint", "1 to 200 characters")
    rows = await run_async(conn, queries.FINGERPRINTS_BY_PREFIX, {"prefix": fingerprint})
    found = [r.fingerprint for r in rows]
    if found and found[0] == fingerprint:
        return fingerprint
    if not found:
        raise UnknownGroupError(fingerprint)
    if len(found) > 1:
        raise AmbiguousFingerprintError(fingerprint, found)
    return found[0]


async def show(conn: Any, fingerprint: str) -> GroupDetail:
    """One group (exact fingerprint or unique prefix) with its verdict, evidence and sample jobs."""
    fp = await resolve(conn, fingerprint)
    [one] = await triage.groups_async(conn, fingerprint=fp, limit=1)
    rows = await run_async(conn, queries.SAMPLE_JOBS, {"ids": [str(j) for j in one.group.sample_job_ids]})
    return GroupDetail(group=one.group, evidence=one.evidence, verdict=one.verdict,
                       sample_jobs=[SampleJob(**r._asdict()) for r in rows])


async def dry_run(conn: Any, fingerprint: str, *, tier: str | None = None) -> DryRun:
    """How many open dead letters a redrive of the group would take, by tier and task; changes nothing."""
    fp = await resolve(conn, fingerprint)
    rows = await run_async(conn, queries.GROUP_OPEN, {"fingerprint": fp})
    by_tier: dict[str, int] = {}
    by_task: dict[str, int] = {}
    for r in rows:
        if r.redrivable:
            by_tier[r.tier or "?"] = by_tier.get(r.tier or "?", 0) + r.open_count
            by_task[r.task or "?"] = by_task.get(r.task or "?", 0) + r.open_count
    redrivable = sum(r.open_count for r in rows if r.redrivable)
    total = sum(r.open_count for r in rows)
    return DryRun(fingerprint=fp, open_dead_letters=total, redrivable=redrivable, not_redrivable=total - redrivable,
                  by_tier=by_tier, by_task=by_task, target_tier=tier)


def _actor(actor: Actor) -> dict[str, Any]:
    return {"by": actor.name, "actor_kind": actor.kind, "client_addr": actor.address}


async def _refused(engine: AsyncEngine, actor: Actor, action: str, fingerprint: str, exc: RequestError) -> None:
    """Audit a refused group action (its own transaction: the action changed nothing)."""
    async with engine.begin() as conn:
        await audit.record(conn, actor, action, [], "not_found" if exc.status == 404 else "refused",
                           {"fingerprint": fingerprint, "error": exc.message})


def _sql_refusal(exc: DBAPIError, fingerprint: str) -> RequestError | None:
    state = getattr(exc.orig, "sqlstate", None)
    if state == NOT_FOUND_SQLSTATE:
        return UnknownGroupError(fingerprint)
    if state == REFUSED_SQLSTATE:
        return RequestError(409, str(exc.orig).splitlines()[0], field="fingerprint")
    return None


async def redrive_group(engine: AsyncEngine, actor: Actor, fingerprint: str, *, tier: str | None = None,
                        reason: str | None = None, batch: int = DEFAULT_BATCH, rate: float | None = None,
                        limit: int | None = None, dry_run_only: bool = False, progress: Progress | None = None,
                        stop: Callable[[], bool] | None = None, sleep: Sleep = asyncio.sleep) -> GroupRedriveResult:
    """Redrive the group's open dead letters through ``outbox.redrive``, ``batch`` per transaction.

    ``rate`` (jobs per second) paces the batches; ``limit`` caps how many this call redrives;
    ``stop()`` is asked before every batch and ends the redrive cleanly (``stopped``), to be resumed by
    another call. ``progress(done, total)`` follows every batch. Raises :class:`UnknownGroupError`,
    :class:`NothingToRedriveError` (both audited as refusals) or a 409 if ``outbox.redrive`` refuses a
    dead letter (the batch is undone).
    """
    if batch < 1:
        raise invalid("batch", "at least 1")
    if rate is not None and rate <= 0:
        raise invalid("rate", "jobs per second, more than 0")
    if limit is not None and limit < 1:
        raise invalid("limit", "at least 1")
    try:
        async with engine.connect() as conn:
            plan = await dry_run(conn, fingerprint, tier=tier)
    except UnknownGroupError as exc:
        if not dry_run_only:  # a dry run changes nothing, so it records nothing either
            await _refused(engine, actor, "redrive_group", fingerprint, exc)
        raise
    fp = plan.fingerprint
    total = plan.redrivable if limit is None else min(limit, plan.redrivable)
    if dry_run_only:
        return GroupRedriveResult(fingerprint=fp, dry_run=True, plan=plan, remaining=plan.redrivable)
    if plan.redrivable == 0:
        refusal = NothingToRedriveError(fp, plan.not_redrivable)
        await _refused(engine, actor, "redrive_group", fp, refusal)
        raise refusal
    result = GroupRedriveResult(fingerprint=fp, dry_run=False, plan=plan, remaining=plan.redrivable)
    started = time.monotonic()
    while result.redriven < total:
        if stop is not None and stop():
            result.stopped = True
            break
        size = min(batch, total - result.redriven)
        row = await _redrive_batch(engine, actor, fp, tier, reason, size)
        result.redriven += row.redriven
        result.remaining = row.remaining
        result.batches += 1
        result.jobs += [Redriven(job_id=j, new_job_id=n) for j, n in zip(row.job_ids, row.new_job_ids, strict=True)]
        if progress is not None:
            progress(result.redriven, total)
        if row.redriven < size or row.remaining == 0:
            break  # the group is done (or the rest is held by another redrive of it)
        if rate is not None:  # pace: never ahead of `rate` jobs per second since the start
            await sleep(max(0.0, result.redriven / rate - (time.monotonic() - started)))
    result.stopped = result.stopped or result.remaining > 0
    return result


async def _redrive_batch(engine: AsyncEngine, actor: Actor, fp: str, tier: str | None, reason: str | None,
                         size: int) -> Any:
    async with engine.begin() as conn:
        try:
            [row] = await run_async(conn, transitions.REDRIVE_GROUP, {
                "fingerprint": fp, "limit": size, "tier": tier, "note": reason, **_actor(actor)})
        except DBAPIError as exc:
            refusal = _sql_refusal(exc, fp)
            if refusal is None:
                raise
            raise refusal from exc
    return row


async def discard_group(engine: AsyncEngine, actor: Actor, fingerprint: str, *, reason: str | None = None,
                        batch: int = DISCARD_BATCH) -> GroupDiscardResult:
    """Discard every open dead letter of the group (raw messages too), ``batch`` per transaction; audited."""
    try:
        async with engine.connect() as conn:
            fp = await resolve(conn, fingerprint)
    except UnknownGroupError as exc:
        await _refused(engine, actor, "discard_group", fingerprint, exc)
        raise
    result = GroupDiscardResult(fingerprint=fp, discarded=0, remaining=0, batches=0)
    while True:
        async with engine.begin() as conn:
            [row] = await run_async(conn, transitions.DISCARD_GROUP, {
                "fingerprint": fp, "limit": batch, "reason": reason, **_actor(actor)})
        result.discarded += row.discarded
        result.remaining = row.remaining
        result.batches += 1
        if row.discarded < batch or row.remaining == 0:
            return result


async def set_group_status(engine: AsyncEngine, actor: Actor, fingerprint: str, status: str, *,
                           note: str | None = None) -> GroupStatusResult:
    """Resolve, ignore or reopen a group (``status``), recording who, when and why; audited."""
    if status not in GROUP_STATUSES:
        raise BadGroupStatusError(status)
    try:
        async with engine.begin() as conn:
            fp = await resolve(conn, fingerprint)
            [row] = await run_async(conn, queries.SET_GROUP_STATUS, {
                "fingerprint": fp, "status": status, "note": note, **_actor(actor)})
    except UnknownGroupError as exc:
        await _refused(engine, actor, "group_status", fingerprint, exc)
        raise
    return GroupStatusResult(fingerprint=fp, previous=row.previous, status=row.status, status_at=row.status_at)
