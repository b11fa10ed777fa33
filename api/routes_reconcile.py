"""``POST /admin/reconcile``: one reconciliation round now (``operate`` scope, audited).

Same round and audit row as ``tierbox reconcile`` (:mod:`tierbox.relay.manual`). A round another
relay holds, or one that cannot read Redis, is refused with 409 (and audited as refused).
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from litestar import Request, post
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.params import JSONBody

from tierbox.api.errors import ErrorBody
from tierbox.api.guards import require
from tierbox.api.openapi import WRITE_ERRORS
from tierbox.api.routes_dlq import actor
from tierbox.ops import params
from tierbox.ops.errors import RequestError
from tierbox.ops.models import MAX_TEXT
from tierbox.relay.reconcile import SKIPPED_LOCKED, TierRound

RESPONSES = {**WRITE_ERRORS,
             409: ResponseSpec(data_container=ErrorBody, description="Another relay's round holds the lock."),
             503: ResponseSpec(data_container=ErrorBody, description="Postgres, RabbitMQ or Redis is unreachable "
                               "(without Redis no round runs: every buffered message would look lost).")}


class ReconcileRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Which tier (every tier if absent), whether only to report, and why (audited)."""

    tier: Annotated[str, msgspec.Meta(max_length=64)] | None = None
    dry_run: bool = False
    #: Skip the two-round rule (the grace still holds).
    force: bool = False
    reason: Annotated[str, msgspec.Meta(max_length=MAX_TEXT)] | None = None


class ReconcileResult(msgspec.Struct, frozen=True, kw_only=True):
    """Per tier what the round found, and the jobs it republished (or would, in a dry run)."""

    dry_run: bool
    republished: int
    tiers: list[TierRound]
    #: Tiers left out because their queue could not be read (tier -> the broker's error); the others ran.
    skipped_tiers: dict[str, str] = msgspec.field(default_factory=dict)


@post("/admin/reconcile", guards=[require("operate")], status_code=200, responses=RESPONSES,
      tags=["flow control"])
async def reconcile(request: Request[Any, Any, Any], state: State,
                    data: JSONBody[ReconcileRequest | None] = None) -> ReconcileResult:
    """Republish published, unstarted jobs RabbitMQ no longer holds: one round now (audited)."""
    from tierbox.relay.manual import reconcile_now  # deferred: the relay's modules load on first use

    body = data or ReconcileRequest()
    tier = params.tier(state.settings, body.tier)
    done = await reconcile_now(state.engine, state.settings, actor(request), tier, dry_run=body.dry_run,
                               force=body.force, reason=body.reason)
    if done.skipped:
        raise RequestError(409 if done.skipped == SKIPPED_LOCKED else 503, f"round skipped: {done.skipped}")
    would = sum(len(t.republished) for t in done.tiers)
    return ReconcileResult(dry_run=body.dry_run, republished=0 if body.dry_run else would, tiers=done.tiers,
                           skipped_tiers=done.skipped_tiers)
