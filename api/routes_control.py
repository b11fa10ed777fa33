"""Flow control over HTTP: pause/resume a tier or task, and temporary tier overrides (``operate`` scope)."""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any

import msgspec
from litestar import Request, delete, get, post, put
from litestar.datastructures import State
from litestar.params import JSONBody, PathParameter

from outbox.errors import FlowStateUnavailableError
from tierbox.api import params
from tierbox.api.guards import require
from tierbox.api.openapi import ERRORS, WRITE_ERRORS
from tierbox.api.routes_dlq import actor
from tierbox.ops import control
from tierbox.ops.errors import RequestError
from tierbox.ops.models import MAX_TEXT

#: A task name in a path.
TaskPath = Annotated[str, PathParameter(min_length=1, max_length=MAX_TEXT, description="The task's name.")]
TierPath = Annotated[str, PathParameter(min_length=1, max_length=64, description="The tier's name.")]


class PauseRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Why it is paused (recorded with the pause and in the audit log)."""

    reason: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None


class Changed(msgspec.Struct, frozen=True):
    """Whether the call changed anything (pausing a paused tier changes nothing)."""

    scope: str
    name: str
    changed: bool


class OverrideRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Route the task to ``tier`` until ``until``, or for ``hours`` (one of them; at most 90 days)."""

    tier: Annotated[str, msgspec.Meta(max_length=64)]
    until: dt.datetime | None = None
    hours: Annotated[float, msgspec.Meta(gt=0, le=control.MAX_OVERRIDE_HOURS)] | None = None
    reason: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None


class OverrideSet(msgspec.Struct, frozen=True):
    """The override in force and how many jobs waiting in the outbox moved to its tier."""

    task: str
    tier: str
    expires_at: dt.datetime
    moved: int


async def _pause(request: Request[Any, Any, Any], state: State, scope: control.Scope, name: str,
                 data: PauseRequest | None) -> Changed:
    changed = await control.pause(state.engine, actor(request), scope, name, (data or PauseRequest()).reason)
    return Changed(scope, name, changed)


@post("/admin/tiers/{tier:str}/pause", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
      tags=["flow control"])
async def pause_tier(request: Request[Any, Any, Any], state: State, tier: TierPath,
                     data: JSONBody[PauseRequest | None] = None) -> Changed:
    """Stop starting this tier's jobs (they wait in the outbox and RabbitMQ; audited)."""
    return await _pause(request, state, "tier", params.tier(state.settings, tier) or tier, data)


@post("/admin/tiers/{tier:str}/resume", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
      tags=["flow control"])
async def resume_tier(request: Request[Any, Any, Any], state: State, tier: TierPath) -> Changed:
    """Let the tier's jobs run again (audited)."""
    name = params.tier(state.settings, tier) or tier
    return Changed("tier", name, await control.resume(state.engine, actor(request), "tier", name))


@post("/admin/tasks/{task:str}/pause", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
      tags=["flow control"])
async def pause_task(request: Request[Any, Any, Any], state: State, task: TaskPath,
                     data: JSONBody[PauseRequest | None] = None) -> Changed:
    """Stop starting this task's jobs (deferred through the outbox until resumed; audited)."""
    return await _pause(request, state, "task", task, data)


@post("/admin/tasks/{task:str}/resume", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
      tags=["flow control"])
async def resume_task(request: Request[Any, Any, Any], state: State, task: TaskPath) -> Changed:
    """Let the task's jobs run again (audited)."""
    return Changed("task", task, await control.resume(state.engine, actor(request), "task", task))


@get("/admin/pauses", guards=[require("read")], responses=ERRORS, tags=["flow control"])
async def list_pauses(db: params.Db) -> list[control.Pause]:
    """Every pause in force."""
    return await control.pauses(db)


@put("/admin/overrides/{task:str}", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
     tags=["flow control"])
async def set_override(request: Request[Any, Any, Any], state: State, task: TaskPath,
                       data: JSONBody[OverrideRequest]) -> OverrideSet:
    """Route the task to another tier until a time (audited); its waiting backlog moves too."""
    tier = params.tier(state.settings, data.tier) or data.tier
    end = control.expiry(data.until, data.hours)
    moved = await control.set_override(state.engine, actor(request), task, tier, end, data.reason)
    return OverrideSet(task, tier, end, moved)


@delete("/admin/overrides/{task:str}", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS,
        tags=["flow control"])
async def clear_override(request: Request[Any, Any, Any], state: State, task: TaskPath) -> Changed:
    """End the task's override now (audited)."""
    return Changed("task", task, await control.clear_override(state.engine, actor(request), task))


@get("/admin/overrides", guards=[require("read")], responses=ERRORS, tags=["flow control"])
async def list_overrides(db: params.Db) -> list[control.Override]:
    """Overrides in force."""
    return await control.overrides(db)


@get("/admin/breakers", guards=[require("read")], responses=ERRORS, tags=["flow control"])
async def list_breakers(state: State) -> dict[str, dict[str, Any]]:
    """Circuit-breaker states shared by every worker (history: ``outbox.breaker_events``)."""
    try:
        return await control.breakers(state.settings, state.redis)
    except FlowStateUnavailableError as exc:  # an outage is reported, never answered as "no breakers"
        raise RequestError(503, f"Redis unreachable: {exc}", code="unavailable") from exc


ROUTES = [list_breakers, pause_tier, resume_tier, pause_task, resume_task, list_pauses, set_override, clear_override,
          list_overrides]
