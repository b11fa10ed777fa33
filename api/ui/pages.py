"""The dashboard's screens (GET only): tiers, dead letters and failure groups, jobs, control.

Every read goes through the same :mod:`tierbox.ops` functions as the JSON API
(bounded, indexed statements); tier health comes from the shared snapshot
(:mod:`tierbox.ops.snapshot`), so open dashboards do not multiply the load.
Each screen has a ``/partial`` twin the page polls (htmx) while it is visible.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from typing import Annotated, Any

from litestar import Request, get
from litestar.datastructures import State
from litestar.params import Parameter
from litestar.response import Redirect, Template

from outbox._sql import run_async
from outbox.errors import FlowStateUnavailableError
from outbox.registry import registry
from tierbox.api import params
from tierbox.api.ui import queries as ui_queries
from tierbox.api.ui.session import CSRF_FIELD
from tierbox.api.ui.web import notices, session_of, viewer
from tierbox.ops import control, group_actions, triage
from tierbox.ops import dead_letters as dlq
from tierbox.ops import jobs as ops_jobs
from tierbox.ops.errors import RequestError
from tierbox.ops.models import JobStatus
from tierbox.scheduler import queries as scheduler_queries

Text = Annotated[str | None, Parameter(max_length=200)]
#: How many rows a list screen shows.
PAGE_ROWS = 50


#: Dead letters one click of "Redrive group" takes (in batches of group_actions.DEFAULT_BATCH). A
#: request must end: a larger group is redriven by clicking again (the page says how many remain),
#: or paced from the CLI (`tierbox dlq groups redrive --rate`).
GROUP_ACTION_LIMIT = 1000


def _context(request: Request[Any, Any, Any], screen: str, **values: Any) -> dict[str, Any]:
    principal, session = viewer(request)
    notice, problem = notices(request, session)
    return {"principal": principal, "csrf_field": CSRF_FIELD, "csrf": session.csrf, "screen": screen,
            "can_act": principal.may("operate"), "notice": notice, "problem": problem, **values}


@get("/", include_in_schema=False)
async def home(request: Request[Any, Any, Any]) -> Redirect:
    """To the tiers screen when logged in, else to the login form."""
    return Redirect("/ui/tiers" if session_of(request) else "/ui/login", status_code=303)


async def _tiers(state: State, db: Any) -> dict[str, Any]:
    health = await state.snapshot.get()
    open_by_tier = state.snapshot.open_dead_letters  # read with the view, by the same shared refresh
    # Pauses and overrides: two tiny tables read per request, so the page right after a pause shows it.
    paused = {(p.scope, p.name): p for p in await control.pauses(db)}
    overrides = await control.overrides(db)
    running = {t.tier: t.running for t in health}
    pools = [{"name": name, "tiers": spec.tiers, "concurrency": spec.concurrency, "reserved": spec.reserved,
              "prefetch": spec.prefetch, "slots": spec.slots, "running": sum(running.get(t, 0) for t in spec.tiers)}
             for name, spec in state.settings.topology.pools.items()]
    return {"tiers": health, "open_by_tier": open_by_tier, "paused": paused, "overrides": overrides,
            "pools": pools, "snapshot_age": state.snapshot.age_s}


@get("/tiers", include_in_schema=False)
async def tiers_page(request: Request[Any, Any, Any], state: State, db: params.Db) -> Template:
    """Per tier: backlog, broker queue, running, outcomes, wait against the SLO, dead letters, pauses."""
    return Template("tiers.html", context=_context(request, "tiers", **await _tiers(state, db)))


@get("/tiers/partial", include_in_schema=False)
async def tiers_partial(request: Request[Any, Any, Any], state: State, db: params.Db) -> Template:
    """The tiers table alone (polled)."""
    return Template("_tiers_table.html", context=_context(request, "tiers", **await _tiers(state, db)))


async def _dead_letters(state: State, db: Any, tier: str | None) -> dict[str, Any]:
    flt = dlq.DeadLetterFilter(tier=params.tier(state.settings, tier or None), state="open")
    page = await dlq.page(db, flt, PAGE_ROWS)
    groups = await triage.groups_async(db, status=None, limit=PAGE_ROWS)
    return {"dead_letters": page.items, "groups": groups, "tier": tier or "",
            "tier_names": list(state.settings.topology.tiers)}


@get("/dlq", include_in_schema=False)
async def dlq_page(request: Request[Any, Any, Any], state: State, db: params.Db, tier: Text = None) -> Template:
    """Failure groups (cause, action, evidence) and the newest open dead letters."""
    return Template("dlq.html", context=_context(request, "dlq", **await _dead_letters(state, db, tier)))


@get("/dlq/partial", include_in_schema=False)
async def dlq_partial(request: Request[Any, Any, Any], state: State, db: params.Db, tier: Text = None) -> Template:
    """The groups and dead-letter tables alone (polled)."""
    return Template("_dlq_tables.html", context=_context(request, "dlq", **await _dead_letters(state, db, tier)))


@get("/dlq/groups/{fingerprint:str}", include_in_schema=False)
async def group_page(request: Request[Any, Any, Any], db: params.Db,
                     fingerprint: Annotated[str, Parameter(max_length=128)]) -> Template:
    """One failure group: its verdict, evidence, counts and sample jobs."""
    found = await triage.groups_async(db, fingerprint=fingerprint, limit=1)
    if not found:
        raise RequestError(404, f"no failure group {fingerprint[:64]!r}")
    # The dry run of a group redrive, shown beside the bulk actions before anyone clicks one.
    plan = await group_actions.dry_run(db, found[0].group.fingerprint)
    return Template("group.html", context=_context(
        request, "dlq", item=found[0], plan=plan, batch_limit=GROUP_ACTION_LIMIT,
        tier_names=list(request.app.state.settings.topology.tiers)))


@get("/dlq/{job_id:str}", include_in_schema=False)
async def dead_letter_page(request: Request[Any, Any, Any], state: State, db: params.Db,
                           job_id: params.JobIdPath) -> Template:
    """One dead letter: redacted payload, every attempt, redrive and discard."""
    detail = await dlq.show(db, params.job_id(job_id))
    return Template("dead_letter.html", context=_context(
        request, "dlq", detail=detail, tier_names=list(state.settings.topology.tiers)))


@get("/jobs", include_in_schema=False)
async def jobs_page(request: Request[Any, Any, Any], state: State, db: params.Db, q: Text = None,
                    task: Text = None, tier: Text = None, status: Text = None, since: Text = None,
                    until: Text = None, key: Text = None) -> Template | Redirect:
    """Search: a job id or idempotency key goes straight to the job; otherwise task, tier, status and a
    time window on ``enqueued_at`` (default the last 24 h) list the newest matches."""
    form = {"q": q or "", "task": task or "", "tier": tier or "", "status": status or "", "since": since or "",
            "until": until or "", "key": key or ""}
    if q:
        with contextlib.suppress(ValueError):
            return Redirect(f"/ui/jobs/{uuid.UUID(q.strip())}", status_code=303)
    if key or q:
        job = await ops_jobs.by_idempotency_key(db, (key or q or "").strip())
        if job is not None:
            return Redirect(f"/ui/jobs/{job.id}", status_code=303)
        return Template("jobs.html", context=_context(request, "jobs", form=form, items=[], statuses=_STATUSES,
                                                      tier_names=list(state.settings.topology.tiers),
                                                      missing=f"no job with id or idempotency key {key or q!r}"))
    if status and status not in _STATUSES:
        raise RequestError(422, f"status: one of {', '.join(_STATUSES)}", field="status")
    flt = ops_jobs.JobFilter(tier=params.tier(state.settings, tier or None), task=task or None,
                             status=status or None, since=_when("since", since), until=_when("until", until))
    page = await ops_jobs.page(db, flt, PAGE_ROWS)
    return Template("jobs.html", context=_context(request, "jobs", form=form, items=page.items, statuses=_STATUSES,
                                                  tier_names=list(state.settings.topology.tiers), missing=None))


_STATUSES: tuple[str, ...] = JobStatus.__args__  # type: ignore[attr-defined]


def _when(field: str, value: str | None) -> dt.datetime | None:
    if not value:
        return None
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(422, f"{field}: not a time (ISO 8601, e.g. 2026-12-01T09:00)", field=field) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


@get("/jobs/{job_id:str}", include_in_schema=False)
async def job_page(request: Request[Any, Any, Any], db: params.Db, job_id: params.JobIdPath) -> Template:
    """A job's timeline: enqueued, published, each attempt with its error and traceback, outcome, dead
    letter, redrives with lineage."""
    parsed = params.job_id(job_id)
    detail = await ops_jobs.show(db, parsed)
    attempts = await dlq.attempts(db, parsed)
    dead = None
    with contextlib.suppress(RequestError):
        dead = (await dlq.show(db, parsed)).dead_letter
    return Template("job.html", context=_context(request, "jobs", detail=detail, attempts=attempts, dead=dead))


async def _control(state: State, db: Any) -> dict[str, Any]:
    breakers: dict[str, dict[str, Any]] | None = None
    breaker_error = None
    try:
        breakers = await control.breakers(state.settings, state.redis)
    except FlowStateUnavailableError as exc:
        breaker_error = str(exc)
    schedules = await run_async(db, scheduler_queries.LIST_SCHEDULES)
    # Tier limits come from the topology; task limits from the tasks this process registered
    # (`tierbox api --app`), each with its state in Redis now.
    limits, limit_error = await control.rate_limits(state.settings, state.redis)
    return {"pauses": await control.pauses(db), "overrides": await control.overrides(db),
            "breakers": breakers, "breaker_error": breaker_error, "limits": limits, "limit_error": limit_error,
            "tasks_known": len(registry),
            "schedules": [(s, _next_run(s.cron, s.tz)) for s in schedules],
            "leader": await _leader(state), "audit": await run_async(db, ui_queries.AUDIT_RECENT, {"limit": 30}),
            "tier_names": list(state.settings.topology.tiers)}


def _next_run(cron: str, tz: str) -> dt.datetime | None:
    """The schedule's next due time (None if its expression or zone no longer parses)."""
    from zoneinfo import ZoneInfo

    from cronsim import CronSim

    try:
        return next(CronSim(cron, dt.datetime.now(ZoneInfo(tz))))
    except Exception:  # noqa: BLE001 - a stored schedule the scheduler would refuse: shown without a next run
        return None


async def _leader(state: State) -> dict[str, Any]:
    """Who holds the scheduler's leader lock in Redis and for how much longer."""
    try:
        holder, ttl_s = await control.scheduler_leader(state.settings, state.redis)
    except Exception as exc:  # noqa: BLE001 - shown on the screen, never "no leader" during an outage
        return {"error": f"Redis did not answer: {type(exc).__name__}"}
    return {"holder": holder, "ttl_s": ttl_s}


@get("/control", include_in_schema=False)
async def control_page(request: Request[Any, Any, Any], state: State, db: params.Db) -> Template:
    """Pauses, overrides, breakers, rate and concurrency limits, schedules and the scheduler's leader, and
    the audit log."""
    return Template("control.html", context=_context(request, "control", **await _control(state, db)))


ROUTES = [home, tiers_page, tiers_partial, dlq_page, dlq_partial, group_page, dead_letter_page, jobs_page, job_page,
          control_page]
