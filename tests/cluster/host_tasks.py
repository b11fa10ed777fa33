"""The host cut-off test's task: every execution counted, its effect exactly-once.

``host_runs`` is written on a connection of its own (autocommit) when the handler starts: raw
executions, late ones from a cut-off host included. ``host_effects`` is written through the job's
session after the handler's work, so it commits with the job's success or not at all: a fenced late
completion leaves no row.
"""

from __future__ import annotations

import os
import time

import psycopg
from sqlalchemy import text

import outbox
from outbox import Tier

DDL = """
CREATE TABLE IF NOT EXISTS public.host_runs (job_id uuid, attempt int, pid int, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.host_effects (job_id uuid, attempt int, pid int,
                                               at timestamptz DEFAULT clock_timestamp());
"""


def _effect(ctx: outbox.TaskContext, seconds: float = 0.0) -> None:
    """Work ``seconds`` on the first attempt (the one a cut-off host runs), briefly on a retry."""
    with psycopg.connect(os.environ["TIERBOX_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.host_runs (job_id, attempt, pid) VALUES (%s, %s, %s)",
                     (ctx.job_id, ctx.attempt, os.getpid()))
    # The work. The first attempt outlasts the cut-off test's outage, so the cut-off host's handler
    # finishes after its link is back and tries to commit late; the retry elsewhere is quick.
    time.sleep(seconds if ctx.attempt == 1 else 0.2)
    ctx.session.execute(text("INSERT INTO public.host_effects (job_id, attempt, pid) VALUES (:j, :a, :p)"),
                        {"j": ctx.job_id, "a": ctx.attempt, "p": os.getpid()})


effect: outbox.Task = outbox.task(_effect, tier=Tier.NORMAL, name="hosts.effect", max_retries=20,
                                  retry_backoff_s=0.05, retry_backoff_max_s=1.0)


def _late_failure(ctx: outbox.TaskContext, seconds: float = 0.0) -> None:
    """Work ``seconds`` on the first attempt, then fail; succeed (with an effect) on a retry."""
    with psycopg.connect(os.environ["TIERBOX_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.host_runs (job_id, attempt, pid) VALUES (%s, %s, %s)",
                     (ctx.job_id, ctx.attempt, os.getpid()))
    if ctx.attempt == 1:
        time.sleep(seconds)
        raise RuntimeError("first attempt fails, late")
    ctx.session.execute(text("INSERT INTO public.host_effects (job_id, attempt, pid) VALUES (:j, :a, :p)"),
                        {"j": ctx.job_id, "a": ctx.attempt, "p": os.getpid()})


late_failure: outbox.Task = outbox.task(_late_failure, tier=Tier.NORMAL, name="hosts.late_failure", max_retries=20,
                                        retry_backoff_s=0.05, retry_backoff_max_s=1.0)
