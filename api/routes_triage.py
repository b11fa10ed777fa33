"""``/admin/failure-groups``: dead letters grouped by root cause, with their verdict, and actions on a whole group.

Reads need a ``read`` token, actions an ``operate`` token; every action is audited with the token's name
and the group's fingerprint (:mod:`tierbox.ops.group_actions`). ``{fingerprint}`` is a group's full
fingerprint or a unique prefix of one.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, get, post
from litestar.datastructures import State
from litestar.params import FromQuery, JSONBody, PathParameter

from tierbox.api import params
from tierbox.api.guards import require
from tierbox.api.openapi import ERRORS, WRITE_ERRORS
from tierbox.api.routes_dlq import actor
from tierbox.ops import group_actions as actions
from tierbox.ops import triage
from tierbox.ops.models import Note, ShortText

#: A group's fingerprint, or a unique prefix of one.
FingerprintPath = Annotated[str, PathParameter(min_length=1, max_length=200,
                                               description="The group's fingerprint or a unique prefix of it.")]


class GroupRedriveRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a group redrive."""

    #: Only say what would be redriven: how many, in which tiers, of which tasks.
    dry_run: bool = False
    #: Move the jobs to this tier. Defaults to each job's own tier.
    tier: ShortText | None = None
    #: Redrive at most this many (the rest stays open, to redrive later).
    limit: Annotated[int, msgspec.Meta(ge=1, le=50_000)] = 1000
    #: Dead letters per batch (one transaction and one audit row each).
    batch: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
    #: Pace: at most this many jobs per second. None: batches back to back.
    rate: Annotated[float, msgspec.Meta(ge=1, le=5000)] | None = None
    #: Why, recorded on every dead letter and in the audit log.
    reason: Note | None = None


class GroupDiscardRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of a group discard."""

    reason: Note | None = None


class GroupStatusRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Optional body of resolve, ignore and reopen."""

    #: Why (the fix deployed, why it is noise ...), kept on the group and in the audit log.
    note: Note | None = None


class FailureGroupController(Controller):
    """Failure groups: read with a ``read`` token, act with an ``operate`` token."""

    path = "/admin/failure-groups"
    tags = ["failure groups"]

    @get("/", guards=[require("read")], responses=ERRORS)
    async def list_groups(self, db: params.Db, status: FromQuery[Literal["open", "resolved", "ignored"] | None] = None,
                          task: params.FilterText = None, limit: params.Limit = 50) -> list[triage.TriagedGroup]:
        """Failure groups, most recently seen first, each with its evidence and its verdict (cause, action)."""
        return list(await triage.groups_async(db, status=status, task=task, limit=limit))

    @get("/{fingerprint:str}", guards=[require("read")], responses=ERRORS)
    async def show_group(self, db: params.Db, fingerprint: FingerprintPath) -> actions.GroupDetail:
        """One group with its verdict, evidence and sample jobs."""
        return await actions.show(db, fingerprint)

    @post("/{fingerprint:str}/redrive", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def redrive_group(self, request: Request[Any, Any, Any], state: State, fingerprint: FingerprintPath,
                            data: JSONBody[GroupRedriveRequest | None] = None) -> actions.GroupRedriveResult:
        """Redrive the group's open dead letters in paced batches (audited); ``dry_run`` only counts them."""
        body = data or GroupRedriveRequest()
        return await actions.redrive_group(
            state.engine, actor(request), fingerprint, tier=params.tier(state.settings, body.tier),
            reason=body.reason, batch=body.batch, rate=body.rate, limit=body.limit, dry_run_only=body.dry_run)

    @post("/{fingerprint:str}/discard", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def discard_group(self, request: Request[Any, Any, Any], state: State, fingerprint: FingerprintPath,
                            data: JSONBody[GroupDiscardRequest | None] = None) -> actions.GroupDiscardResult:
        """Discard every open dead letter of the group: kept for audit, never redriven (audited)."""
        return await actions.discard_group(state.engine, actor(request), fingerprint,
                                           reason=(data or GroupDiscardRequest()).reason)

    @post("/{fingerprint:str}/resolve", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def resolve_group(self, request: Request[Any, Any, Any], state: State, fingerprint: FingerprintPath,
                            data: JSONBody[GroupStatusRequest | None] = None) -> actions.GroupStatusResult:
        """Mark the group resolved (a later failure reopens it as a regression); audited."""
        return await _status(request, state, fingerprint, "resolved", data)

    @post("/{fingerprint:str}/ignore", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def ignore_group(self, request: Request[Any, Any, Any], state: State, fingerprint: FingerprintPath,
                           data: JSONBody[GroupStatusRequest | None] = None) -> actions.GroupStatusResult:
        """Mark the group ignored (it stays ignored; its counts keep moving); audited."""
        return await _status(request, state, fingerprint, "ignored", data)

    @post("/{fingerprint:str}/reopen", guards=[require("operate")], status_code=200, responses=WRITE_ERRORS)
    async def reopen_group(self, request: Request[Any, Any, Any], state: State, fingerprint: FingerprintPath,
                           data: JSONBody[GroupStatusRequest | None] = None) -> actions.GroupStatusResult:
        """Mark the group open again; audited."""
        return await _status(request, state, fingerprint, "open", data)


async def _status(request: Request[Any, Any, Any], state: State, fingerprint: str, status: str,
                  data: GroupStatusRequest | None) -> actions.GroupStatusResult:
    return await actions.set_group_status(state.engine, actor(request), fingerprint, status,
                                          note=(data or GroupStatusRequest()).note)
