"""Tasks whose return value goes into their completion webhook (``webhook_result=True``), one per
way a worker runs a handler: async with ``ctx``, sync with ``ctx``, async without ``ctx``."""

from __future__ import annotations

import outbox
from outbox import Tier


@outbox.task(tier=Tier.HIGH, name="wh.result_async", webhook_result=True)
async def result_async(ctx: outbox.TaskContext, n: int) -> dict[str, object]:
    """Returns through the attempt's session path."""
    return {"n": n, "path": "async", "attempt": ctx.attempt}


@outbox.task(tier=Tier.HIGH, name="wh.result_sync", webhook_result=True)
def result_sync(ctx: outbox.TaskContext, n: int) -> dict[str, object]:
    """Returns from the thread pool."""
    return {"n": n, "path": "sync"}


@outbox.task(tier=Tier.HIGH, name="wh.result_sessionless", webhook_result=True)
async def result_sessionless(n: int) -> list[object]:
    """Returns from the batched, sessionless success path."""
    return [n, "sessionless"]


@outbox.task(tier=Tier.HIGH, name="wh.result_odd", webhook_result=True)
def result_odd(n: int) -> object:
    """Returns something JSON cannot carry."""
    return object()
