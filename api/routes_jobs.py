"""``/admin/jobs``: the ledger, filtered and paginated, one job's status and timeline, its event stream."""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, get
from litestar.datastructures import State
from litestar.params import FromQuery
from litestar.response import ServerSentEvent

from tierbox.api import params
from tierbox.api.guards import require
from tierbox.api.job_events import JobEvents, last_event_id
from tierbox.api.openapi import ERRORS
from tierbox.ops import jobs
from tierbox.ops.models import JobPage, JobStatus


class JobController(Controller):
    """Jobs of the ledger (``read`` scope)."""

    path = "/admin/jobs"
    tags = ["jobs"]
    guards = [require("read")]

    @get("/", responses=ERRORS)
    async def list_jobs(
        self, db: params.Db, state: State, tier: params.FilterText = None, task: params.FilterText = None,
        status: FromQuery[JobStatus | None] = None, since: params.Since = None, until: params.Until = None,
        limit: params.Limit = 50, cursor: params.Cursor = None,
    ) -> JobPage:
        """Jobs newest first (by enqueue time), payloads redacted."""
        flt = jobs.JobFilter(tier=params.tier(state.settings, tier), task=task, status=status,
                             since=since, until=until)
        return await jobs.page(db, flt, limit, cursor)

    @get("/{job_id:str}", responses=ERRORS)
    async def show_job(self, db: params.Db, job_id: params.JobIdPath) -> jobs.JobStatusDetail:
        """A job's status, its latest progress and its timeline: enqueue, publish, attempts, progress,
        dead letter, redrives."""
        return await jobs.show(db, params.job_id(job_id))

    @get("/{job_id:str}/events", media_type="text/event-stream", responses=ERRORS)
    async def job_events(self, request: Request[Any, Any, Any], state: State,
                         job_id: params.JobIdPath) -> ServerSentEvent:
        """The job's status changes, progress and outcome as Server-Sent Events (docs/progress.md):
        resumable with ``Last-Event-ID``, a heartbeat comment every 15 s, closed after the outcome."""
        events: JobEvents = state.job_events
        return await events.response(params.job_id(job_id), last_event_id(request))
