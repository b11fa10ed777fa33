"""``/admin/jobs``: the ledger, filtered and paginated, and one job's timeline."""

from __future__ import annotations

from litestar import Controller, get
from litestar.datastructures import State
from litestar.params import FromQuery

from tierbox.api import params
from tierbox.api.guards import require
from tierbox.api.openapi import ERRORS
from tierbox.ops import jobs
from tierbox.ops.models import JobDetail, JobPage, JobStatus


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
    async def show_job(self, db: params.Db, job_id: params.JobIdPath) -> JobDetail:
        """A job's status and its timeline: enqueue, publish, attempts, dead letter, redrives."""
        return await jobs.show(db, params.job_id(job_id))
