"""The flow gate against real Redis (and Postgres for breaker history).

Every test gets its own Redis key prefix, deleted afterwards. "Two workers" are
two :class:`Gate` instances with their own Redis clients; the rate test also
runs two real OS processes against one limit and measures the rate achieved.
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox._sql import run_async
from outbox.config import Settings
from outbox.errors import FlowStateUnavailableError
from outbox.flow import parse_rate
from outbox.registry import Task
from tierbox.flow.gate import BreakerPolicy, Gate, Hold, connect
from tierbox.flow.queries import BREAKER_HISTORY

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1: connection refused


def _noop(**kwargs: Any) -> None:
    return None


def make_task(name: str, **policy: Any) -> Task:
    """A task that is never registered, so tests do not touch the global registry."""
    if isinstance(policy.get("rate_limit"), str):
        policy["rate_limit"] = parse_rate(policy["rate_limit"])
    return Task(name=name, fn=_noop, tier="normal", **policy)


@pytest.fixture
def key_prefix(service_urls: dict[str, str]) -> Iterator[str]:
    """A unique Redis key prefix; every key under it is deleted after the test."""
    value = f"tierbox-test:{uuid.uuid4().hex[:10]}"
    yield value
    client = redis.Redis.from_url(service_urls["redis"])
    for key in client.scan_iter(match=f"{value}:*"):
        client.delete(key)
    client.close()


GateFactory = Callable[..., Gate]


@pytest.fixture
async def make_gate(service_urls: dict[str, str], key_prefix: str) -> AsyncIterator[GateFactory]:
    """Builds gates (one Redis client each, like separate workers) and closes their clients."""
    clients = []

    def build(events: Any = None, redis_url: str | None = None, settings: Settings | None = None,
              **options: Any) -> Gate:
        settings = settings or Settings(redis_url=redis_url or service_urls["redis"])
        client = connect(settings)
        clients.append(client)
        return Gate(settings, client, events, key_prefix=key_prefix, **options)

    yield build
    for client in clients:
        await client.aclose()


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An async engine on this test's own committed database."""
    eng = create_async_engine(db_url.replace("postgresql://", "postgresql+psycopg://", 1))
    yield eng
    await eng.dispose()


# -- rate limits -------------------------------------------------------------------------------


def _hammer(redis_url: str, key_prefix: str, rate: str, duration_s: float, ready: Any, out: Any) -> None:
    """One worker process hammering admit: retry within 2 ms of a refusal (never later than told).

    Polling rather than sleeping the whole ``delay_s`` measures the limiter at its
    fastest (the hardest case for "no more than the limit").
    """
    out.put(asyncio.run(_hammer_async(redis_url, key_prefix, rate, duration_s, ready)))


async def _hammer_async(redis_url: str, key_prefix: str, rate: str, duration_s: float, ready: Any) -> list[float]:
    settings = Settings(redis_url=redis_url)
    client = connect(settings)
    gate = Gate(settings, client, None, key_prefix=key_prefix)
    task = make_task("rated", rate_limit=rate)
    admitted: list[float] = []
    ready.wait()  # both processes are up (imports done): start hammering together
    start = time.time()
    while (now := time.time()) < start + duration_s:
        decision = await gate.admit(task, "normal", {})
        if decision.run:
            admitted.append(now)
        else:
            assert decision.reason == "rate_limited" and 0 < decision.delay_s <= 0.02, decision
            await asyncio.sleep(min(decision.delay_s, 0.002))
    await client.aclose()
    return admitted


def test_rate_limit_holds_across_two_processes(service_urls: dict[str, str], key_prefix: str) -> None:
    limit, duration_s = 50, 3.0
    ctx = multiprocessing.get_context("spawn")  # real, independent interpreters
    ready, out = ctx.Barrier(2), ctx.Queue()
    args = (service_urls["redis"], key_prefix, f"{limit}/s", duration_s, ready, out)
    workers = [ctx.Process(target=_hammer, args=args, daemon=True) for _ in range(2)]
    for w in workers:
        w.start()
    results = [out.get(timeout=30) for _ in workers]
    for w in workers:
        w.join(timeout=5)
    start = min(min(r) for r in results if r)
    counted = [sum(1 for t in r if t < start + duration_s) for r in results]
    rate = sum(counted) / duration_s
    print(f"measured {rate:.1f}/s against a limit of {limit}/s; admitted per process {counted}")
    assert all(counted), "each process should win some admissions"
    assert abs(rate - limit) <= 0.1 * limit


async def test_two_gates_share_a_limit_and_refusals_carry_the_wait(make_gate: GateFactory) -> None:
    a, b = make_gate(), make_gate()
    warm = make_task("warm-up", rate_limit="1000/s")
    for gate in (a, b):  # connect and load the scripts first, so the two admits below are back to back
        await gate.admit(warm, "normal", {})
    task = make_task("shared", rate_limit="20/s")
    assert (await a.admit(task, "normal", {})).run
    refused = await b.admit(task, "normal", {})
    assert (refused.run, refused.reason) == (False, "rate_limited")
    assert 0.01 < refused.delay_s <= 0.05  # within one 50 ms emission interval (less the tolerance)
    await asyncio.sleep(refused.delay_s)
    assert (await b.admit(task, "normal", {})).run

    admitted, start = 0, time.monotonic()
    while time.monotonic() - start < 1.0:
        for gate in (a, b):
            decision = await gate.admit(task, "normal", {})
            admitted += decision.run
        await asyncio.sleep(0.002)
    assert 18 <= admitted <= 22


async def test_per_key_limits_are_independent(make_gate: GateFactory) -> None:
    gate = make_gate()
    task = make_task("per_org", rate_limit="1/m", rate_key="org")
    assert (await gate.admit(task, "normal", {"org": "a"})).run
    second = await gate.admit(task, "normal", {"org": "a"})
    assert (second.run, second.reason) == (False, "rate_limited")
    assert 59 < second.delay_s <= 60
    assert (await gate.admit(task, "normal", {"org": "b"})).run
    # Without the key kwarg the job falls back to the task-wide bucket, itself limited.
    assert (await gate.admit(task, "normal", {})).run
    assert not (await gate.admit(task, "normal", {})).run


async def test_tier_limit_refusal_spends_nothing_of_the_task_limit(
    make_gate: GateFactory, tmp_path: Path, service_urls: dict[str, str], key_prefix: str
) -> None:
    topology = tmp_path / "topology.json"
    topology.write_text(json.dumps({"tiers": {"normal": {
        "weight": 5, "slo_s": 120, "queue_type": "quorum", "pool": "normal", "rate_limit": "1/m"}}}))
    gate = make_gate(settings=Settings(redis_url=service_urls["redis"], topology_file=str(topology)))
    assert (await gate.admit(make_task("unlimited"), "normal", {})).run
    limited = make_task("limited", rate_limit="1/m")
    refused = await gate.admit(limited, "normal", {})
    assert (refused.run, refused.reason) == (False, "rate_limited")
    client = redis.Redis.from_url(service_urls["redis"])
    assert not client.exists(f"{key_prefix}:rate:task:limited")  # all-or-nothing: untouched
    client.close()


# -- concurrency -------------------------------------------------------------------------------


async def test_concurrency_limit_holds_across_gates_and_release_frees_a_slot(make_gate: GateFactory) -> None:
    a, b = make_gate(), make_gate()
    task = make_task("two_at_once", concurrency=2)
    first, second = await a.admit(task, "normal", {}), await b.admit(task, "normal", {})
    assert first.run and second.run and first.token and second.token
    third = await a.admit(task, "normal", {})
    assert (third.run, third.reason) == (False, "concurrency")
    assert 0 < third.delay_s <= 1.0
    await b.release(second.token)
    assert (await a.admit(task, "normal", {})).run


async def test_unreleased_holder_expires_and_renew_keeps_it(make_gate: GateFactory) -> None:
    dead, alive = make_gate(lease_s=0.3), make_gate(lease_s=0.3)
    task = make_task("one_at_once", concurrency=1)
    held = await alive.admit(task, "normal", {})
    assert held.run and held.token
    for _ in range(3):  # renewed past its lease: still held
        await asyncio.sleep(0.15)
        assert await alive.renew([held.token]) == 1
        assert not (await dead.admit(task, "normal", {})).run
    await asyncio.sleep(0.35)  # the holder "died": no renewal, the lease lapses
    taken = await dead.admit(task, "normal", {})
    assert taken.run
    assert await alive.renew([held.token]) == 0  # a lapsed lease is not resurrected


# -- circuit breakers --------------------------------------------------------------------------


async def _history(engine: AsyncEngine, breaker: str) -> list[tuple[Any, ...]]:
    async with engine.connect() as conn:
        rows = await run_async(conn, BREAKER_HISTORY, {"breaker": breaker})
    return [(r[0], r[1], r[3]) for r in rows]


async def test_breaker_states_count_the_workers_window_in_a_process_that_never_declared_it(
        make_gate: GateFactory, engine: AsyncEngine) -> None:
    """The admin API does not import the module that declared the breaker: it must still count
    failures over the workers' window (here 1 s), not the default 30 s, and show their threshold."""
    worker = make_gate(engine, policies={"stripe": BreakerPolicy(threshold=3, window_s=1.0)})
    api = make_gate(engine)  # no policies: the default would be 5 failures in 30 s
    task = make_task("charge", breaker="stripe")
    for _ in range(2):
        await worker.record(task, ok=False)
    now = (await api.breaker_states())["stripe"]
    assert (now["state"], now["failures"], now["threshold"], now["window_s"]) == ("closed", 2, 3, 1.0)
    await asyncio.sleep(1.1)  # both failures leave the workers' 1 s window
    later = (await api.breaker_states())["stripe"]
    assert (later["failures"], later["window_s"]) == (0, 1.0)


async def test_breaker_opens_for_everyone_half_opens_and_closes(make_gate: GateFactory, engine: AsyncEngine) -> None:
    policies = {"stripe": BreakerPolicy(open_s=1.0)}
    a, b = make_gate(engine, policies=policies), make_gate(engine, policies=policies)
    task = make_task("charge", breaker="stripe")
    for _ in range(4):
        await a.record(task, ok=False)
    assert (await b.admit(task, "normal", {})).run  # 4 < threshold 5
    await a.record(task, ok=False)

    refused = await b.admit(task, "normal", {})  # the other worker sees it open
    assert (refused.run, refused.reason) == (False, "breaker_open")
    assert 0.5 < refused.delay_s <= 1.0
    assert (await a.breaker_states())["stripe"]["state"] == "open"

    await asyncio.sleep(refused.delay_s)
    probe = await b.admit(task, "normal", {})
    assert probe.run and probe.token  # the one probe holds a lease
    busy = await a.admit(task, "normal", {})
    assert (busy.run, busy.reason, busy.delay_s) == (False, "breaker_open", 1.0)

    await b.record(task, ok=True)
    await b.release(probe.token)
    assert (await a.admit(task, "normal", {})).run
    assert (await a.breaker_states())["stripe"]["state"] == "closed"
    assert await _history(engine, "stripe") == [
        ("closed", "open", 5), ("open", "half_open", 0), ("half_open", "closed", 0)]


async def test_failed_probe_reopens(make_gate: GateFactory, engine: AsyncEngine) -> None:
    gate = make_gate(engine, policies={"flaky": BreakerPolicy(threshold=1, open_s=0.2)})
    task = make_task("call_flaky", breaker="flaky")
    await gate.record(task, ok=False)
    await asyncio.sleep(0.25)
    probe = await gate.admit(task, "normal", {})
    assert probe.run
    await gate.record(task, ok=False)
    again = await gate.admit(task, "normal", {})
    assert (again.run, again.reason) == (False, "breaker_open")
    assert [row[:2] for row in await _history(engine, "flaky")] == [
        ("closed", "open"), ("open", "half_open"), ("half_open", "open")]


# -- fail-open ---------------------------------------------------------------------------------


async def test_redis_down_fails_open_and_warns_once(make_gate: GateFactory, caplog: pytest.LogCaptureFixture) -> None:
    gate = make_gate(redis_url=DEAD_REDIS_URL)
    task = make_task("everything", rate_limit="1/m", concurrency=1, breaker="down")
    caplog.set_level(logging.WARNING, logger="tierbox.worker")
    start = time.monotonic()
    decisions = [await gate.admit(task, "normal", {}) for _ in range(5)]
    await gate.record(task, ok=False)
    await gate.release(Hold("m", ("k",)))
    assert await gate.renew([Hold("m", ("k",))]) == 0
    with pytest.raises(FlowStateUnavailableError, match="Redis did not answer"):
        await gate.breaker_states()  # a report cannot fail open: {} would read "no breaker tripped"
    assert all(d.run for d in decisions)
    assert time.monotonic() - start < 3.0  # a dead Redis must not stall the pool
    warnings = [r for r in caplog.records if "action=gate.redis_unavailable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelno == logging.WARNING
