"""The chaos suite's tasks: every execution is counted, every effect is exactly-once.

``chaos_effects`` is written through the job's own session (it commits with
the job's success, so it must hold exactly one row per committed job);
``chaos_runs`` is written on a separate autocommit connection (it counts raw
executions, duplicates included).
"""

from __future__ import annotations

import os
import random
import time

import psycopg
from sqlalchemy import text

import outbox
from outbox import Tier

DDL = """
CREATE TABLE IF NOT EXISTS public.chaos_orders (job_id uuid PRIMARY KEY, tier text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.chaos_rolled_back (job_id uuid PRIMARY KEY);
CREATE TABLE IF NOT EXISTS public.chaos_effects (job_id uuid, attempt int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.chaos_runs (job_id uuid, attempt int, pid int, at timestamptz DEFAULT clock_timestamp());
-- The checks probe both by job: without these, "did a rolled-back job run?" scanned chaos_runs once
-- per rolled-back job (51,172 x 448,941 rows in a 30-minute run: 12 minutes of checking).
CREATE INDEX IF NOT EXISTS ix_chaos_runs_job_id ON public.chaos_runs (job_id);
CREATE INDEX IF NOT EXISTS ix_chaos_effects_job_id ON public.chaos_effects (job_id);
"""

_runs_conn: psycopg.Connection | None = None


def _record_run(ctx: outbox.TaskContext) -> None:
    global _runs_conn
    for _ in range(2):
        try:
            if _runs_conn is None or _runs_conn.closed:
                _runs_conn = psycopg.connect(os.environ["TIERBOX_DATABASE_URL"], autocommit=True)
            _runs_conn.execute("INSERT INTO public.chaos_runs (job_id, attempt, pid) VALUES (%s, %s, %s)",
                               (ctx.job_id, ctx.attempt, os.getpid()))
            return
        except psycopg.OperationalError:
            _runs_conn = None


def _effect(ctx: outbox.TaskContext, work_ms: int) -> None:
    _record_run(ctx)
    if work_ms:
        time.sleep(work_ms / 1000 * random.random())
    ctx.session.execute(text("INSERT INTO public.chaos_effects (job_id, attempt) VALUES (:j, :a)"),
                        {"j": ctx.job_id, "a": ctx.attempt})


def _make(tier: Tier) -> outbox.Task:
    def handler(ctx: outbox.TaskContext, work_ms: int = 0) -> None:
        _effect(ctx, work_ms)

    handler.__qualname__ = f"effect_{tier.value}"
    task: outbox.Task = outbox.task(handler, tier=tier, name=f"chaos.effect_{tier.value}", max_retries=20,
                                    retry_backoff_s=0.05, retry_backoff_max_s=1.0)
    return task


EFFECTS = {tier.value: _make(tier) for tier in Tier}
