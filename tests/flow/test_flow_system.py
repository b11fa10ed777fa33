"""Flow control end to end: real relay and worker processes, real Redis, Postgres and RabbitMQ."""

from __future__ import annotations

import asyncio
import datetime as dt

import msgspec
import pytest

from tests.system import System
from tierbox.ops import control
from tierbox.ops.audit import Actor
from tierbox.ops.db import create_engine

pytestmark = pytest.mark.slow


def starts(system: System, note: str) -> list[dt.datetime]:
    return [r[0] for r in system.q("SELECT at FROM public.test_runs WHERE note = %s ORDER BY at", note)]


def test_rate_limit_holds_across_two_worker_processes_and_fails_nothing(system: System) -> None:
    system.relay()
    system.worker("--pool", "normal")
    system.worker("--pool", "normal")
    jobs = [system.enqueue("sample.rated") for _ in range(30)]
    for job in jobs:
        system.wait_status(job, "succeeded", timeout=40)
    times = starts(system, "rated")
    rate = (len(times) - 1) / (times[-1] - times[0]).total_seconds()
    assert 4.5 <= rate <= 5.5, f"{rate:.2f} starts/s against a limit of 5/s"
    assert system.q("SELECT max(attempts) FROM outbox.jobs") == [(1,)]  # deferrals consumed no attempt
    assert system.q("SELECT count(*) FROM outbox.dead_letters") == [(0,)]


def test_redis_unreachable_fails_open(system: System) -> None:
    system.relay()
    worker = system.worker("--pool", "normal", settings=msgspec.structs.replace(
        system.settings, redis_url="redis://127.0.0.1:1/0"))
    jobs = [system.enqueue("sample.rated") for _ in range(10)]
    for job in jobs:
        system.wait_status(job, "succeeded", timeout=30)
    assert "action=gate.redis_unavailable" in worker.output()


def test_breaker_opens_for_everyone_and_defers_without_failing(system: System) -> None:
    system.relay()
    system.worker("--pool", "normal", "--concurrency", "1")
    first = [system.enqueue("sample.behind_breaker") for _ in range(5)]
    for job in first:
        system.wait_status(job, "dead", timeout=30)  # max_retries=0: each failure is final
    later = [system.enqueue("sample.behind_breaker") for _ in range(3)]
    system.wait(lambda: system.q("SELECT to_state FROM outbox.breaker_events WHERE breaker = 'flaky-downstream'")
                == [("open",)], what="breaker opened")
    system.wait(lambda: all(system.q("SELECT available_at > now() + interval '5 seconds' FROM outbox.jobs "
                                     "WHERE id = %s", j) == [(True,)] for j in later), what="later jobs deferred")
    assert all(system.status(j) == "pending" for j in later)
    assert system.q("SELECT count(*) FROM outbox.attempts WHERE job_id = ANY(%s)", later) == [(0,)]


def _control(system: System, fn: str, *args: object) -> object:
    async def run() -> object:
        engine = create_engine(system.settings)
        try:
            return await getattr(control, fn)(engine, Actor.os_user(), *args)
        finally:
            await engine.dispose()
    return asyncio.run(run())


def test_pausing_a_tier_and_a_task_loses_nothing(system: System) -> None:
    system.relay()
    system.worker("--pool", "normal")
    _control(system, "pause", "tier", "normal", "maintenance")
    held = system.enqueue("sample.invoice", 1)
    _control(system, "pause", "task", "sample.chain_second", "bug")
    system.wait(lambda: "normal" in system.logs(), what="logs")
    asyncio.run(asyncio.sleep(2.0))
    assert system.status(held) == "pending"  # waits in the outbox while its tier is paused
    _control(system, "resume", "tier", "normal")
    system.wait_status(held, "succeeded")
    chained = system.enqueue("sample.chain_second", 5)
    asyncio.run(asyncio.sleep(2.0))
    assert system.status(chained) in ("pending", "published")  # deferred, not run
    _control(system, "resume", "task", "sample.chain_second")
    system.wait_status(chained, "succeeded", timeout=30)
    assert system.q("SELECT attempts FROM outbox.jobs WHERE id = %s", chained) == [(1,)]


def test_override_routes_new_jobs_without_restart_and_expires(system: System) -> None:
    system.relay()
    system.worker("--pool", "urgent")
    until = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)
    _control(system, "set_override", "sample.invoice", "high", until, "invoices are urgent today")
    job = system.enqueue("sample.invoice", 7)  # normal by declaration, high by override
    system.wait_status(job, "succeeded")
    assert system.q("SELECT tier FROM outbox.jobs WHERE id = %s", job) == [("high",)]
    explicit = system.enqueue("sample.invoice", 8, tier="normal")  # an explicit tier wins over an override
    assert system.q("SELECT tier FROM outbox.jobs WHERE id = %s", explicit) == [("normal",)]
    asyncio.run(asyncio.sleep(5.5))
    later = system.enqueue("sample.invoice", 9)
    assert system.q("SELECT tier FROM outbox.jobs WHERE id = %s", later) == [("normal",)]
