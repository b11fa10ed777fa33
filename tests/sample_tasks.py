"""Tasks the tests enqueue and the test worker processes run (imported as ``sample_tasks``).

Handlers record what they did in ``test_effects`` (same transaction as the
job's success: the exactly-once path) and in ``test_runs`` (committed at
once: counts raw executions).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

from sqlalchemy import text

import outbox
from outbox import Tier

EFFECTS_DDL = """
CREATE TABLE IF NOT EXISTS public.test_effects (job_id uuid, attempt int, note text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.test_runs (job_id uuid, attempt int, pid int, note text, at timestamptz DEFAULT clock_timestamp());
CREATE TABLE IF NOT EXISTS public.test_flags (id int);
"""


def _record_run(ctx: outbox.TaskContext, note: str = "") -> None:
    import psycopg

    with psycopg.connect(os.environ["TIERBOX_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.test_runs (job_id, attempt, pid, note) VALUES (%s, %s, %s, %s)",
                     (ctx.job_id, ctx.attempt, os.getpid(), note))


@outbox.task(tier=Tier.CRITICAL, name="sample.otp")
def send_otp(phone: str) -> None:
    """A no-op critical task."""


@outbox.task(tier=Tier.HIGH, name="sample.webhook")
def payment_webhook(event_id: str) -> None:
    """A no-op high task."""


@outbox.task(tier=Tier.NORMAL, name="sample.invoice")
def invoice(order_id: int) -> None:
    """A no-op normal task."""


@outbox.task(tier=Tier.LOW, name="sample.sync_calendar")
def sync_calendar(user_id: int) -> None:
    """A no-op low task."""


@outbox.task(tier=Tier.BULK, name="sample.export")
def export_csv(n: int) -> None:
    """A no-op bulk task."""


@outbox.task(tier=Tier.CALLS, name="sample.call_summary", priority=3)
def call_summary(call_id: int) -> None:
    """A no-op calls task with a low in-lane priority."""


@outbox.task(tier=Tier.CALLS, name="sample.call_recording", priority=9)
def call_recording(call_id: int) -> None:
    """A no-op calls task with a high in-lane priority."""


@outbox.task(tier=Tier.HIGH, name="sample.effect")
def effect(ctx: outbox.TaskContext, note: str = "") -> None:
    """Write an effect row through the job's own session (commits with success)."""
    _record_run(ctx, note)
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, :n)"),
                        {"j": ctx.job_id, "a": ctx.attempt, "n": note})


@outbox.task(tier=Tier.HIGH, name="sample.async_nap", max_retries=5)
async def async_nap(seconds: float, n: int = 0) -> None:
    """Async, without ctx, taking a while: in flight when a test kills its worker."""
    await asyncio.sleep(seconds)


@outbox.task(tier=Tier.HIGH, name="sample.nap_then_fail", max_retries=1, retry_backoff_s=0.1,
             retry_backoff_max_s=0.2)
async def nap_then_fail(seconds: float, n: int = 0) -> None:
    """Async, without ctx: take a while, then fail (a retry, then a dead letter, recorded after it returns)."""
    await asyncio.sleep(seconds)
    raise RuntimeError(f"nap {n} failed")


@outbox.task(tier=Tier.NORMAL, name="sample.normal_effect")
def normal_effect(ctx: outbox.TaskContext, note: str = "") -> None:
    """:func:`effect` in the normal tier (the relay's main lane)."""
    effect.fn(ctx, note)


@outbox.task(tier=Tier.HIGH, name="sample.async_effect")
async def async_effect(ctx: outbox.TaskContext, note: str = "") -> None:
    """Async variant of :func:`effect`."""
    await asyncio.to_thread(_record_run, ctx, note)
    await ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, :n)"),
                              {"j": ctx.job_id, "a": ctx.attempt, "n": note})


@outbox.task(tier=Tier.HIGH, name="sample.async_ping")
async def async_ping(n: int) -> None:
    """Async, without ctx: the worker's sessionless path (success autocommitted on its own)."""


@outbox.task(tier=Tier.HIGH, name="sample.effect_then_die", max_retries=3)
def effect_then_die(ctx: outbox.TaskContext) -> None:
    """Insert the effect, then die on the first attempt before the commit."""
    _record_run(ctx)
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, 'x')"),
                        {"j": ctx.job_id, "a": ctx.attempt})
    if ctx.attempt == 1:
        os.kill(os.getpid(), signal.SIGKILL)


@outbox.task(tier=Tier.HIGH, name="sample.always_die", max_retries=1)
def always_die(ctx: outbox.TaskContext) -> None:
    """Kill the worker on every attempt (a crash loop)."""
    _record_run(ctx)
    os.kill(os.getpid(), signal.SIGKILL)


@outbox.task(tier=Tier.HIGH, name="sample.flaky", max_retries=2, retry_backoff_s=0.2, retry_backoff_max_s=1.0)
def flaky(ctx: outbox.TaskContext, fail_times: int = 99) -> None:
    """Fail the first ``fail_times`` attempts, then succeed."""
    _record_run(ctx)
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")


@outbox.task(tier=Tier.HIGH, name="sample.reject")
def reject(ctx: outbox.TaskContext) -> None:
    """Fail with a non-retryable error."""
    _record_run(ctx)
    raise outbox.Reject("card declined: not retrying")


@outbox.task(tier=Tier.HIGH, name="sample.slow_async", timeout_s=0.5, max_retries=0)
async def slow_async(ctx: outbox.TaskContext) -> None:
    """Exceed its timeout (cancelled at the limit)."""
    await asyncio.sleep(30)


@outbox.task(tier=Tier.HIGH, name="sample.sleep")
def sleep(ctx: outbox.TaskContext, seconds: float, note: str = "") -> None:
    """Block a worker slot for ``seconds`` (sync), then record an effect."""
    _record_run(ctx, note)
    time.sleep(seconds)
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, :n)"),
                        {"j": ctx.job_id, "a": ctx.attempt, "n": note})


@outbox.task(tier=Tier.CRITICAL, name="sample.critical_effect")
def critical_effect(ctx: outbox.TaskContext, note: str = "") -> None:
    """A critical task that records when it started."""
    _record_run(ctx, note)


@outbox.task(tier=Tier.BULK, name="sample.long", long=True)
def long_job(ctx: outbox.TaskContext, seconds: float) -> None:
    """A long job: acked once its lease is recorded, protected by the lease after."""
    _record_run(ctx)
    time.sleep(seconds)
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, 'long')"),
                        {"j": ctx.job_id, "a": ctx.attempt})


@outbox.task(tier=Tier.NORMAL, name="sample.chain_first")
def chain_first(ctx: outbox.TaskContext, n: int) -> None:
    """Enqueue the next step through the job's session (atomic with this step's success)."""
    outbox.enqueue(ctx.session, "sample.chain_second", args=[n + 1])


@outbox.task(tier=Tier.NORMAL, name="sample.chain_second")
def chain_second(ctx: outbox.TaskContext, n: int) -> None:
    """Second pipeline step."""
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, :n)"),
                        {"j": ctx.job_id, "a": ctx.attempt, "n": f"chain {n}"})


@outbox.task(tier=Tier.HIGH, name="sample.needs_flag", max_retries=0)
def needs_flag(ctx: outbox.TaskContext) -> None:
    """Fail until a row exists in test_flags (lets a test fix the cause, then redrive)."""
    flagged = ctx.session.execute(text("SELECT count(*) FROM public.test_flags")).scalar()
    if not flagged:
        raise RuntimeError("downstream unavailable")
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, 'flag')"),
                        {"j": ctx.job_id, "a": ctx.attempt})


@outbox.task(tier=Tier.NORMAL, name="sample.rated", rate_limit="5/s")
def rated(ctx: outbox.TaskContext) -> None:
    """Cluster-wide limited to 5 starts per second."""
    _record_run(ctx, "rated")


@outbox.task(tier=Tier.NORMAL, name="sample.behind_breaker", breaker="flaky-downstream", max_retries=0)
def behind_breaker(ctx: outbox.TaskContext) -> None:
    """Calls a downstream that fails until test_flags has a row; shares the breaker 'flaky-downstream'."""
    _record_run(ctx, "breaker")
    if not ctx.session.execute(text("SELECT count(*) FROM public.test_flags")).scalar():
        raise ConnectionError("downstream is down")


@outbox.task(tier=Tier.HIGH, name="sample.progress", max_retries=0)
def report_progress(ctx: outbox.TaskContext, steps: int = 5, pause_s: float = 0.6, fail: bool = False) -> None:
    """Report ``steps`` progress calls ``pause_s`` apart, writing an effect through the job's session;
    with ``fail``, raise at the end (the effect rolls back, the progress stays)."""
    ctx.session.execute(text("INSERT INTO public.test_effects (job_id, attempt, note) VALUES (:j, :a, 'progress')"),
                        {"j": ctx.job_id, "a": ctx.attempt})
    for step in range(1, steps + 1):
        time.sleep(pause_s)
        ctx.progress(step / steps, f"step {step} of {steps}", {"step": step})
    if fail:
        raise RuntimeError("failed after reporting progress")


@outbox.task(tier=Tier.HIGH, name="sample.async_progress", max_retries=0)
async def async_report_progress(ctx: outbox.TaskContext, steps: int = 5, pause_s: float = 0.6) -> None:
    """:func:`report_progress` as an async handler (progress written from the event loop)."""
    for step in range(1, steps + 1):
        await asyncio.sleep(pause_s)
        ctx.progress(step / steps, f"step {step} of {steps}", {"step": step})
