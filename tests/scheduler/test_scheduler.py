"""The periodic scheduler against real Postgres and Redis, and as real ``tierbox scheduler`` processes.

Due-time computation is tested with an injected ``now`` (``Scheduler.tick(now=...)``); the
exactly-once, leader-kill and expiry properties with real processes on a per-second schedule
(cronsim accepts a sixth, seconds field).
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis

import outbox
from outbox import Tier, cron
from outbox._sql import Statement
from outbox.config import Settings
from outbox.registry import Registry
from tests.helpers import ROOT, settings_env
from tests.ledger.test_statements import positional
from tests.system import System
from tierbox.scheduler import queries as scheduler_queries
from tierbox.scheduler.scheduler import (
    Scheduler,
    dues_between,
    idempotency_key,
    latest_due,
    runs_to_enqueue,
)

UTC = dt.UTC
ROME = "Europe/Rome"

APP_MODULE = '''
import os

import psycopg

import outbox
from outbox import Tier, cron


@outbox.task(tier=Tier.HIGH, name="sched.every_second", schedule=cron("* * * * * *", misfire="all"), expires=60)
def every_second(ctx: outbox.TaskContext) -> None:
    with psycopg.connect(os.environ["TIERBOX_DATABASE_URL"], autocommit=True) as conn:
        conn.execute("INSERT INTO public.test_runs (job_id, attempt, pid, note) VALUES (%s, %s, %s, 'sched')",
                     (ctx.job_id, ctx.attempt, os.getpid()))
'''


# --------------------------------------------------------------------------- fixtures and helpers


def make_registry(expr: str = "* * * * *", misfire: Any = "latest", expires: float = 3600,
                  name: str = "sched.job", tz: str = "UTC") -> Registry:
    """A private registry holding one scheduled task."""
    reg = Registry()

    @outbox.task(tier=Tier.HIGH, name=name, schedule=cron(expr, misfire=misfire, tz=tz), expires=expires,
                 registry_=reg)
    def job() -> None:
        """A scheduled no-op."""

    return reg


@pytest.fixture
def lock_prefix(prefix: str, service_urls: dict[str, str]) -> Iterator[str]:
    """A Redis key prefix unique to this test; its keys are deleted afterwards."""
    yield prefix
    client = redis.Redis.from_url(service_urls["redis"])
    for key in client.scan_iter(match=f"{prefix}*"):
        client.delete(key)
    client.close()


def scheduler(settings: Settings, reg: Registry, **kw: Any) -> Scheduler:
    return Scheduler(settings.psycopg_url, redis_url=settings.redis_url, registry_=reg,
                     key_prefix=settings.queue_prefix, **kw)


def jobs(settings: Settings) -> list[tuple[Any, ...]]:
    """(idempotency_key, available_at, enqueued_at, status) of every job, by due time."""
    with psycopg.connect(settings.database_url) as conn:
        return conn.execute("SELECT idempotency_key, available_at, enqueued_at, status FROM outbox.jobs "
                            "ORDER BY available_at").fetchall()


def set_last_due(settings: Settings, name: str, at: dt.datetime | None) -> None:
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute("UPDATE outbox.schedules SET last_due_at = %s WHERE name = %s", (at, name))


def minute_floor(at: dt.datetime) -> dt.datetime:
    return at.replace(second=0, microsecond=0)


# --------------------------------------------------------------------------- statements


@pytest.mark.parametrize("attr", [a for a, v in vars(scheduler_queries).items() if isinstance(v, Statement)])
def test_scheduler_statement_prepares_and_plans(attr: str, tx: psycopg.Connection) -> None:
    stmt: Statement = getattr(scheduler_queries, attr)
    sql, names = positional(stmt)
    tx.execute(f"PREPARE sched_stmt AS {sql}")
    types = tx.execute("SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'sched_stmt'").fetchone()
    assert types is not None and "unknown" not in types[0], (attr, types)
    args = ", ".join(["NULL"] * len(names))
    assert tx.execute(f"EXPLAIN EXECUTE sched_stmt{f'({args})' if names else ''}").fetchall()


# --------------------------------------------------------------------------- due times (pure)


def test_latest_due_includes_an_exact_due_time() -> None:
    s = cron("*/5 * * * *")
    at = dt.datetime(2026, 11, 24, 10, 5, tzinfo=UTC)
    assert latest_due(s, at) == at
    assert latest_due(s, at - dt.timedelta(microseconds=1)) == dt.datetime(2026, 11, 24, 10, 0, tzinfo=UTC)
    assert list(dues_between(s, at, at + dt.timedelta(minutes=10))) == [
        at + dt.timedelta(minutes=5), at + dt.timedelta(minutes=10)]


def test_next_due_is_dst_correct_in_rome_across_the_october_change() -> None:
    daily = cron("30 2 * * *", tz=ROME)
    first = daily.next_after(dt.datetime(2026, 10, 24, 12, tzinfo=UTC))
    second = daily.next_after(first)
    # 02:30 local exists twice on 25 October (CEST, then CET): it runs once, at the first one.
    assert first.astimezone(UTC) == dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
    assert second.astimezone(UTC) == dt.datetime(2026, 10, 26, 1, 30, tzinfo=UTC)
    assert second.astimezone(UTC) - first.astimezone(UTC) == dt.timedelta(hours=25)
    # An hourly schedule runs 25 times on the 25-hour local day, once per real hour.
    hourly = cron("0 * * * *", tz=ROME)
    start = dt.datetime(2026, 10, 24, 22, tzinfo=UTC) - dt.timedelta(seconds=1)  # 25 Oct 00:00 CEST
    runs = list(dues_between(hourly, start, dt.datetime(2026, 10, 25, 22, 59, tzinfo=UTC)))
    assert len(runs) == 25
    assert len({r.astimezone(UTC) for r in runs}) == 25
    # And the keys of two runs at "02:00" local differ (they are written in UTC).
    assert len({idempotency_key("h", r) for r in runs}) == 25


def test_spring_forward_skips_the_missing_hour_without_a_herd() -> None:
    daily = cron("30 2 * * *", tz=ROME, misfire="all")
    anchor = dt.datetime(2026, 3, 28, 12, tzinfo=UTC)
    runs, last = runs_to_enqueue(daily, anchor, dt.datetime(2026, 3, 30, 12, tzinfo=UTC))
    assert len(runs) == 2 and last == runs[-1]  # 29 March has no 02:30; cronsim runs it at 03:30 once


@pytest.mark.parametrize(("misfire", "count"), [("latest", 1), ("all", 10), ("none", 0)])
def test_misfire_policies_after_downtime(misfire: str, count: int) -> None:
    s = cron("* * * * *", misfire=misfire)  # type: ignore[arg-type]
    now = dt.datetime(2026, 11, 24, 10, 10, 30, tzinfo=UTC)
    runs, last = runs_to_enqueue(s, now - dt.timedelta(minutes=10, seconds=30), now)
    assert len(runs) == count
    assert last == dt.datetime(2026, 11, 24, 10, 10, tzinfo=UTC)
    if runs:
        assert runs[-1] == last


def test_misfire_none_keeps_a_run_due_within_the_grace() -> None:
    s = cron("* * * * *", misfire="none")
    now = dt.datetime(2026, 11, 24, 10, 10, 1, tzinfo=UTC)
    assert runs_to_enqueue(s, now - dt.timedelta(minutes=5), now, grace_s=2.0)[0] == [minute_floor(now)]


# --------------------------------------------------------------------------- tick against Postgres


def test_first_sight_does_not_replay_history(settings: Settings) -> None:
    s = scheduler(settings, make_registry("* * * * *", misfire="all"))
    assert s.tick() == 0
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT name, task, cron, misfire, last_due_at, expires_s FROM outbox.schedules").fetchall()
    assert row == [("sched.job", "sched.job", "* * * * *", "all", None, 3600.0)]


@pytest.mark.parametrize(("misfire", "count"), [("latest", 1), ("all", 10), ("none", 0)])
def test_downtime_catch_up_follows_the_policy(settings: Settings, misfire: str, count: int) -> None:
    s = scheduler(settings, make_registry("* * * * *", misfire=misfire))
    s.tick()
    now = minute_floor(dt.datetime.now(UTC)) - dt.timedelta(minutes=5) + dt.timedelta(seconds=30)
    set_last_due(settings, "sched.job", minute_floor(now) - dt.timedelta(minutes=10))
    assert s.tick(now=now) == count
    assert s.tick(now=now) == 0  # the window is consumed: nothing twice
    rows = jobs(settings)
    assert len(rows) == count
    if count:
        assert rows[-1][0] == idempotency_key("sched.job", minute_floor(now))
        assert rows[-1][1] == minute_floor(now)
    with psycopg.connect(settings.database_url) as conn:
        last_due, last_job = conn.execute("SELECT last_due_at, last_job_id FROM outbox.schedules").fetchone() or (0, 0)
    assert last_due == minute_floor(now)
    assert (last_job is not None) == bool(count)


def test_runs_past_their_expiry_are_skipped_not_enqueued(settings: Settings) -> None:
    s = scheduler(settings, make_registry("* * * * *", misfire="all", expires=150))
    s.tick()
    now = dt.datetime.now(UTC)
    set_last_due(settings, "sched.job", minute_floor(now) - dt.timedelta(minutes=5))
    dues = [minute_floor(now) - dt.timedelta(minutes=k) for k in range(4, -1, -1)]
    live = [due for due in dues if (now - due).total_seconds() < 150]
    assert 2 <= len(live) <= 3
    assert s.tick(now=now) == len(live)  # the older ones are past their 150 s: skipped, not enqueued
    assert [r[1] for r in jobs(settings)] == live


def test_a_stale_scheduler_is_fenced_by_the_last_due_guard(settings: Settings) -> None:
    reg = make_registry("* * * * * *", misfire="latest")
    a, b = scheduler(settings, reg), scheduler(settings, reg)
    a.tick()
    now = dt.datetime.now(UTC).replace(microsecond=0)
    set_last_due(settings, "sched.job", now - dt.timedelta(seconds=5))
    # b read the state, then a advanced it: b's enqueue+advance transaction must roll back.
    conn = b._connection()
    from outbox._sql import run

    (anchor, previous), = [(r[1], r[2]) for r in run(conn, scheduler_queries.SCHEDULE_STATE, {"names": ["sched.job"]})]
    assert a.tick(now=now + dt.timedelta(seconds=2)) == 1
    d = __import__("tierbox.scheduler.scheduler", fromlist=["declared"]).declared(reg)[0]
    assert b._tick_one(conn, d, anchor, previous, now + dt.timedelta(seconds=3)) == 0
    assert len(jobs(settings)) == 1


def test_two_schedulers_ticking_concurrently_enqueue_each_run_once(settings: Settings) -> None:
    reg = make_registry("* * * * * *", misfire="all")
    pair = [scheduler(settings, reg), scheduler(settings, reg)]
    pair[0].tick()
    start = dt.datetime.now(UTC).replace(microsecond=0) - dt.timedelta(seconds=30)
    set_last_due(settings, "sched.job", start)
    nows = [start + dt.timedelta(milliseconds=250 * k) for k in range(1, 81)]
    barrier = threading.Barrier(2)
    counts = [0, 0]

    def ticker(i: int) -> None:
        for now in nows:
            barrier.wait()
            counts[i] += pair[i].tick(now=now)

    threads = [threading.Thread(target=ticker, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    rows = jobs(settings)
    expected = [start + dt.timedelta(seconds=k) for k in range(1, 21)]
    assert [r[1] for r in rows] == expected  # every second once: no gap, no duplicate
    assert sum(counts) == 20


# --------------------------------------------------------------------------- leadership (Redis)


def test_one_leader_renewal_and_compare_and_delete(settings: Settings, lock_prefix: str) -> None:
    reg = make_registry()
    a, b = scheduler(settings, reg, lock_ttl_s=3), scheduler(settings, reg, lock_ttl_s=3)
    assert a.hold_leadership() and not b.hold_leadership()
    client = redis.Redis.from_url(settings.redis_url)
    key = f"{lock_prefix}tierbox:scheduler:leader"
    assert client.get(key) == a.token.encode() and 0 < client.pttl(key) <= 3000
    a._renew_at = 0.0
    assert a.hold_leadership()  # renewed by compare-and-pexpire
    client.set(key, "someone-else", px=3000)  # a leader whose lock was taken stops at its next renewal
    a._renew_at = 0.0
    assert not a.hold_leadership() and not a.leading
    a.release()  # compare-and-del: not ours any more, so left alone
    assert client.get(key) == b"someone-else"
    client.delete(key)
    assert b.hold_leadership()
    b.release()
    assert client.get(key) is None


def test_redis_unreachable_means_no_tick_and_a_loud_line(settings: Settings, lock_prefix: str,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    reg = make_registry("* * * * * *", misfire="latest")
    down = Scheduler(settings.psycopg_url, redis_url="redis://127.0.0.1:1/0", registry_=reg,
                     key_prefix=lock_prefix, lock_ttl_s=3)
    with caplog.at_level(logging.ERROR, logger="tierbox.scheduler"):
        assert down.step() == down.poll_s
    assert "action=scheduler.redis_unreachable" in caplog.text
    assert not down.leading
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.schedules").fetchone() == (0,)  # it never ticked
    up = scheduler(settings, reg, lock_ttl_s=3)
    up.step()
    assert up.leading
    up.release()


# --------------------------------------------------------------------------- real processes


def app_settings(settings: Settings, tmp_path: Path) -> tuple[Settings, dict[str, str]]:
    module = f"sched_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(APP_MODULE)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT), str(ROOT / "tests")])}
    return msgspec.structs.replace(settings, app=f"sample_tasks,{module}"), env


def leader_of(procs: list[Any]) -> Any:
    leaders = [p for p in procs if p.alive() and "scheduler.leader_elected" in p.output()]
    return leaders[0] if len(leaders) == 1 else None


def test_two_scheduler_processes_fire_on_time_once_and_survive_a_leader_kill(
        system: System, tmp_path: Path, lock_prefix: str) -> None:
    settings, env = app_settings(system.settings, tmp_path)
    pair = [system.start("scheduler", env=env, settings=settings) for _ in range(2)]
    leader = system.wait(lambda: leader_of(pair), what="one leader")
    standby = next(p for p in pair if p is not leader)
    system.wait(lambda: len(jobs(settings)) >= 5, what="five runs")
    assert "scheduler.leader_elected" not in standby.output()  # the standby never ticked

    leader.kill()  # SIGKILL: no release, the lock must expire
    killed_at = dt.datetime.now(UTC)
    system.wait(lambda: "scheduler.leader_elected" in standby.output(), timeout=20, what="standby takes over")
    took_over_s = (dt.datetime.now(UTC) - killed_at).total_seconds()
    system.wait(lambda: jobs(settings)[-1][1] > killed_at + dt.timedelta(seconds=took_over_s + 3),
                what="runs after the takeover")

    rows = jobs(settings)
    dues = [r[1] for r in rows]
    assert len({r[0] for r in rows}) == len(rows)  # no duplicate run
    assert all((b - a) == dt.timedelta(seconds=1) for a, b in itertools.pairwise(dues)), dues  # no gap
    lateness = [(r[2] - r[1]).total_seconds() for r in rows]
    before = [late for r, late in zip(rows, lateness, strict=True) if r[1] < killed_at - dt.timedelta(seconds=1)]
    assert max(before) < 1.0, before  # on time while a leader lives
    # Runs due during the outage are caught up (misfire=all) within the bound: TTL + one standby poll.
    assert max(lateness) <= 10.0 + 1.0 + 1.0, max(lateness)
    print(f"takeover after SIGKILL: {took_over_s:.2f} s; worst run lateness {max(lateness):.2f} s")

    standby.kill(15)
    assert standby.wait(15) == 0
    assert "scheduler.stopped" in standby.output()


def test_a_run_not_started_before_it_expires_is_expired_not_executed(system: System, tmp_path: Path) -> None:
    settings, env = app_settings(system.settings, tmp_path)
    reg = make_registry("* * * * * *", misfire="latest", expires=1, name="sched.every_second")
    s = scheduler(settings, reg)
    # Early in a second: the run due at its start is then well inside its 1 s of life when ticked (a
    # tick at .997 s found it 0.997 s old and, with the scheduler's own timing, past it: a flake).
    while dt.datetime.now(UTC).microsecond > 300_000:
        time.sleep(0.02)
    s.tick()
    now = dt.datetime.now(UTC)
    set_last_due(settings, "sched.every_second", now.replace(microsecond=0) - dt.timedelta(seconds=3))
    assert s.tick(now=now) == 1
    ((key, _, _, status),) = jobs(settings)
    assert status == "pending"
    time.sleep(1.5)  # no relay, no worker: the run's second of life passes
    system.start("relay", env=env, settings=settings)
    system.worker("--pool", "urgent", env=env, settings=settings)
    job_id = system.q("SELECT id FROM outbox.jobs WHERE idempotency_key = %s", key)[0][0]
    system.wait_status(job_id, "expired")
    time.sleep(0.5)
    assert system.runs(job_id) == 0


def test_schedules_command_lists_declared_schedules(settings: Settings, tmp_path: Path) -> None:
    settings, env = app_settings(settings, tmp_path)
    reg = make_registry("* * * * * *", misfire="all", expires=60, name="sched.every_second")
    s = scheduler(settings, reg)
    s.tick()
    now = dt.datetime.now(UTC).replace(microsecond=0)
    set_last_due(settings, "sched.every_second", now - dt.timedelta(seconds=2))
    assert s.tick(now=now) == 2
    base = settings_env(settings)
    base.update(env)
    out = subprocess.run([sys.executable, "-m", "tierbox.cli", "schedules", "--json"], cwd=ROOT, env=base,
                         capture_output=True, text=True, timeout=60, check=True)
    (row,) = json.loads(out.stdout)
    assert row["name"] == "sched.every_second" and row["cron"] == "* * * * * *" and row["misfire"] == "all"
    assert dt.datetime.fromisoformat(row["last_due"]) == now
    assert row["last_job"] and dt.datetime.fromisoformat(row["next_due"]) > now
    table = subprocess.run([sys.executable, "-m", "tierbox.cli", "schedules"], cwd=ROOT, env=base,
                           capture_output=True, text=True, timeout=60, check=True).stdout
    assert re.search(r"^NAME\s+TASK\s+CRON\s+TZ\s+NEXT_DUE\s+LAST_DUE\s+LAST_JOB\s+MISFIRE", table, re.M), table
    assert "sched.every_second" in table
