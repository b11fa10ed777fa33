"""Reconciliation on an operator's request: one round now, shared by ``tierbox reconcile`` and
``POST /admin/reconcile``.

The round is the relay's (:class:`~tierbox.relay.reconcile.Reconciler`), run in one transaction with
its ``outbox.admin_audit`` row (action ``reconcile``; dry runs and refused rounds are audited too).
Republished jobs are recorded with reason ``manual`` and the operator as actor. Without ``force``
the two-round rule holds against the previous round, the relay's or an operator's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import Settings
from tierbox.ops import audit
from tierbox.ops.audit import Actor
from tierbox.relay.reconcile import Reconciler, Round


async def reconcile_now(engine: AsyncEngine, settings: Settings, actor: Actor, tier: str | None = None, *,
                        dry_run: bool = False, force: bool = False, reason: str | None = None) -> Round:
    """One round over ``tier`` (every tier if None); returns what it found and republished (or would)."""
    reconciler = await Reconciler.open(settings, actor.name, reason="manual")
    try:
        async with engine.begin() as conn:
            done = await reconciler.round(conn, [tier] if tier else None, dry_run=dry_run, force=force)
            ids = [] if dry_run else [j for t in done.tiers for j in t.republished]
            await audit.record(conn, actor, "reconcile", ids, "refused" if done.skipped else "ok",
                               _detail(done, tier, dry_run, force, reason))
    finally:
        await reconciler.close()
    return done


def _detail(done: Round, tier: str | None, dry_run: bool, force: bool, reason: str | None) -> dict[str, Any]:
    return {"tier": tier, "dry_run": dry_run, "force": force, "reason": reason, "skipped": done.skipped,
            "skipped_tiers": done.skipped_tiers,
            "tiers": {t.tier: {"owed": t.owed, "ready": t.ready, "held": t.held, "shortfall": t.shortfall,
                               "candidates": len(t.candidates), "republished": len(t.republished)}
                      for t in done.tiers}}
