"""``/admin/dlq``: list, count, show, redrive (one or bulk) and discard dead letters."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody, QueryParameter

from tierbox.api import params
from tierbox.api.guards import require
from tierbox.api.openapi import ERRORS, WRITE_ERRORS
from tierbox.ops import dead_letters as dlq
from tierbox.ops.audit import Actor
from tierbox.ops.errors import invalid
from tierbox.ops.models import (
    BulkRedriveRequest,
    BulkRedriveResult,
    DeadLetterDetail,
    DeadLetterPage,
    DeadLetterReason,
    Discarded,
    DiscardRequest,
    Redriven,
    RedriveRequest,
    TierReasonCount,
)


def actor(request: Request[Any, Any, Any]) -> Actor:
    """The audited actor of a request: its token's name and the client's address."""
    return Actor.of(request.state.principal, request.client.host if request.client else None)


class DeadLetterController(Controller):
    """Dead letters: read with a ``read`` token, act with an ``operate`` token."""

    path = "/admin/dlq"
    tags = ["dead letters"]

    @get("/", guards=[require("read")], responses=ERRORS)
    async def list_dead_letters(
        self, db: params.Db, state: State, tier: params.FilterText = None, task: params.FilterText = None,
        reason: FromQuery[DeadLetterReason | None] = None, error_type: params.FilterText = None,
        since: params.Since = None, until: params.Until = None,
        dl_state: Annotated[Literal["open", "redriven", "discarded", "all"], QueryParameter(name="state")] = "open",
        limit: params.Limit = 50, cursor: params.Cursor = None,
    ) -> DeadLetterPage:
        """Dead letters, newest first, payloads redacted; ``state`` defaults to open ones."""
        flt = dlq.DeadLetterFilter(tier=params.tier(state.settings, tier), task=task, reason=reason,
                                   error_type=error_type, since=since, until=until,
                                   state=None if dl_state == "all" else dl_state)
        return await dlq.page(db, flt, limit, cursor)

    @get("/by-tier", guards=[require("read")], responses=ERRORS)
    async def count_by_tier(self, db: params.Db) -> list[TierReasonCount]:
        """Open dead letters counted per tier and reason."""
        return await dlq.by_tier(db)

    @get("/{job_id:str}", guards=[require("read")], responses=ERRORS)
    async def show_dead_letter(self, db: params.Db, job_id: params.JobIdPath) -> DeadLetterDetail:
        """One dead letter with every attempt of its job."""
        return await dlq.show(db, params.job_id(job_id))

    @post("/{job_id:str}/redrive", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def redrive_one(self, request: Request[Any, Any, Any], state: State, job_id: params.JobIdPath,
                          data: JSONBody[RedriveRequest | None] = None) -> Redriven:
        """Re-enqueue a dead job as a new job (audited); 409 if it was already redriven or discarded."""
        body = data or RedriveRequest()
        if not body.reset_attempts:
            raise invalid("reset_attempts", "a redriven job is a new job and always starts with zero attempts")
        return await dlq.redrive(state.engine, actor(request), params.job_id(job_id),
                                 tier=params.tier(state.settings, body.tier), reason=body.reason)

    @post("/redrive", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def redrive_bulk(self, request: Request[Any, Any, Any], state: State,
                           data: JSONBody[BulkRedriveRequest]) -> BulkRedriveResult:
        """Redrive matching open dead letters, oldest first, paced; ``dry_run`` only counts."""
        params.tier(state.settings, data.filter.tier, "filter.tier")
        params.tier(state.settings, data.target_tier, "target_tier")
        if not data.reason.strip():
            raise invalid("reason", "say why (it is recorded on every dead letter and in the audit log)")
        return await dlq.redrive_bulk(state.engine, actor(request), data)

    @post("/{job_id:str}/discard", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def discard(self, request: Request[Any, Any, Any], state: State, job_id: params.JobIdPath,
                      data: JSONBody[DiscardRequest | None] = None) -> Discarded:
        """Mark a dead letter discarded: kept for audit, never redriven (audited)."""
        parsed = params.job_id(job_id)
        await dlq.discard(state.engine, actor(request), parsed, reason=(data or DiscardRequest()).reason)
        return Discarded(job_id=parsed)

