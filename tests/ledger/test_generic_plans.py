"""Generic plans for Tierbox's own by-id statements on the partitioned history (outbox._plans).

Real Postgres (migrated: the history is partitioned by day), real RabbitMQ, a real relay process and
an in-process pool. What is checked: the relay's and the worker ledger's connections plan a by-id
statement once, where a connection with the server's default plans it again on every execution;
and a handler's own transaction keeps the server's default (our setting is not imposed on its
queries).
"""

from __future__ import annotations

import asyncio
import uuid

import psycopg
import pytest
from sqlalchemy import text

import outbox
from outbox import _plans as plans
from outbox import _transitions as transitions
from outbox._sql import run_async
from outbox.config import Settings
from outbox.registry import registry
from outbox.tiers import PoolSpec
from tests.system import System
from tierbox.relay import Relay
from tierbox.workers.pool import Pool

SEEN: list[str] = []

PLANS = "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement LIKE %s"


@outbox.task(tier="high", name="tests.plans.reads_its_setting")
async def reads_its_setting(ctx: outbox.TaskContext) -> None:
    """Records the plan cache mode its own transaction runs with."""
    assert ctx.session is not None
    SEEN.append((await ctx.session.execute(text("SELECT current_setting('plan_cache_mode')"))).scalar_one())


async def _plan_counts(conn: psycopg.AsyncConnection[tuple[int, int]], runs: int) -> tuple[int, int]:
    """Run the relay's MARK_PUBLISHED ``runs`` times (prepared, on unknown ids) and count its plans."""
    for _ in range(runs):
        await run_async(conn, transitions.MARK_PUBLISHED, {"ids": [uuid.uuid4()]})
    row = await (await conn.execute(PLANS, ("%DELETE FROM outbox.pending%",))).fetchone()
    assert row is not None, "MARK_PUBLISHED was not prepared"
    return row[0], row[1]


async def test_a_by_id_statement_is_planned_once_with_the_setting_and_every_time_without(
        settings: Settings) -> None:
    async with await psycopg.AsyncConnection.connect(settings.psycopg_url, autocommit=True) as default:
        generic, custom = await _plan_counts(default, 8)
        assert custom == 8 and generic == 0, (generic, custom)  # the cost this module removes
    async with await psycopg.AsyncConnection.connect(settings.psycopg_url, autocommit=True) as tuned:
        await plans.apply_async(tuned)
        generic, custom = await _plan_counts(tuned, 8)
        assert custom == 0 and generic == 8, (generic, custom)


async def test_the_relays_connection_uses_generic_plans(settings: Settings) -> None:
    relay = await Relay.connect(settings)
    try:
        row = await (await relay.db.execute("SELECT current_setting('plan_cache_mode')")).fetchone()
        assert row == ("force_generic_plan",)
    finally:
        await relay.close()


@pytest.mark.slow
async def test_the_ledger_uses_generic_plans_and_a_handlers_transaction_keeps_the_default(system: System) -> None:
    SEEN.clear()
    system.relay()
    with psycopg.connect(system.settings.database_url) as conn:
        jobs = outbox.enqueue_many(conn, [outbox.job(reads_its_setting) for _ in range(3)])
    pool = Pool(system.settings, "high", PoolSpec(tiers=("high",), concurrency=2), registry)
    assert pool.ledger.engine is pool.ledger_engine
    assert pool.starts.group.engine is pool.ledger_engine
    assert pool.executor.successes.group.engine is pool.ledger_engine
    async with pool.ledger_engine.connect() as conn:
        assert (await conn.execute(text("SELECT current_setting('plan_cache_mode')"))).scalar_one() \
            == "force_generic_plan"
    counts = await asyncio.wait_for(pool.drain(), 90)
    assert counts["succeeded"] == 3
    assert SEEN == ["auto"] * 3  # the handler's transaction: the server's default, not ours
    assert system.q("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s) AND status = 'succeeded'", jobs) == [(3,)]
