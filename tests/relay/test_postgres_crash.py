"""The relay's asynchronous batch commit against a real Postgres crash: nothing stranded, nothing run twice.

The relay commits each batch with ``synchronous_commit = off`` (``tierbox.relay.relay.ASYNC_COMMIT``):
after RabbitMQ confirmed a batch, the commit that deletes its ``outbox.pending`` rows and marks its
jobs ``published`` returns before its WAL is flushed. The claim in the code is that losing such a
commit loses nothing: the rows are pending again, the state of a relay killed between confirm and
commit, so the jobs are published again and the ledger absorbs the copies.

The fault that matters is a crash of the Postgres server: ``pg_ctl stop -m immediate`` (SIGQUIT to
the postmaster). Every backend exits at once, no checkpoint is written, and shared memory, with the
WAL buffers not yet written out, is gone; on restart the server runs crash recovery from the WAL on
disk. An asynchronous commit whose commit record was still in those buffers is lost although other
sessions already saw it (an asynchronous commit is visible before it is flushed), which is exactly
the case the argument has to survive. (An OS crash or power loss would also lose WAL written to the
kernel but not yet fsynced; asynchronous commit does not change the order in which WAL reaches disk,
so that loses a suffix of the same log, the same kind of state, and needs no other test. With
``synchronous_commit = on`` none of this can happen to a commit that returned: it waits for its flush.)

The private server runs with ``wal_writer_delay = 10s`` (its maximum) and a huge
``wal_writer_flush_after``, so asynchronous commits stay in the WAL buffers up to ten seconds
instead of the default 200 ms: that widens the window the crash has to hit (the production window
is the same fault, only narrower), and is what lets the first test insist that the crash really
lost relay commits: a crash that lost none proved nothing. Autovacuum is off for the same reason:
its commits are synchronous and flush every earlier asynchronous one.
"""

from __future__ import annotations

import asyncio
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import aiormq
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import Proc, wait_until
from tests.private_postgres import PrivatePostgres, private_postgres, unavailable
from tests.system import System
from tierbox import migrations

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

#: Server settings of the private instance (fsync stays on, the default: the crash must be a real one).
CRASH_SETTINGS = {
    # Asynchronous commits wait for the WAL writer's round; at its maximum (10 s) the crash below finds
    # them still unflushed. This widens the window the test exercises; it does not create it.
    "wal_writer_delay": "10s",
    # Otherwise the WAL writer also flushes once 1 MB of WAL is pending.
    "wal_writer_flush_after": "1GB",
    # An autovacuum or auto-analyze commits synchronously, flushing every asynchronous commit before it.
    "autovacuum": "off",
    # Nor a timed checkpoint within the test.
    "checkpoint_timeout": "1h",
}
JOBS = 200
TASK = "sample.normal_effect"  # records one effect in the job's own success transaction
TIER = "normal"


@pytest.fixture
def pg() -> Iterator[PrivatePostgres]:
    """A private server (never the shared one on 5432) with :data:`CRASH_SETTINGS`; deleted afterwards."""
    why = unavailable()
    if why:
        pytest.skip(f"no private PostgreSQL: {why}")
    with private_postgres(**CRASH_SETTINGS) as server:
        yield server


@pytest.fixture
def crash_settings(pg: PrivatePostgres, prefix: str, service_urls: dict[str, str]) -> Settings:
    """A migrated database on the private server; the test's own queue prefix on the shared broker.

    Batches of 50: the crash then catches several asynchronous batch commits, not a single one.

    ``reconcile_interval_s = 0``: the relay's reconciler is a second writer whose synchronous commits
    would flush the batch commits before the crash (and it republishes by its own rules; the
    scenarios here are about the batch commit alone).
    """
    url = pg.create_database("crash")
    migrations.upgrade(url)
    return Settings(
        database_url=url, amqp_url=service_urls["rabbitmq"], redis_url=service_urls["redis"],
        queue_prefix=prefix, relay_poll_interval_s=0.2, relay_retry_delay_s=0.2, lease_s=2.0,
        reaper_interval_s=0.5, shutdown_grace_s=5.0, app="sample_tasks", reconcile_interval_s=0,
        relay_batch_size=50,  # several batch commits in flight, not one
    )


def count(url: str, sql: str, *params: object) -> int:
    """The one integer ``sql`` returns, on a connection of its own."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def queue_depth(settings: Settings, tier: str) -> int:
    """Messages ready in ``tier``'s queue (a passive declare on the shared broker)."""
    async def depth() -> int:
        conn = await aio_pika.connect(settings.amqp_url)
        async with conn:
            ch = await conn.channel()
            try:
                q = await ch.declare_queue(settings.queue_name(tier), passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return 0
            return int(q.declaration_result.message_count or 0)
    return asyncio.run(depth())


def status_counts(url: str) -> dict[str, int]:
    """Jobs per status."""
    with psycopg.connect(url, autocommit=True) as conn:
        return {s: int(n) for s, n in conn.execute("SELECT status, count(*) FROM outbox.jobs GROUP BY status")}


def start(system: System, *args: str, ready: str) -> Proc:
    """Start ``tierbox ARGS`` at DEBUG (the relay's batch lines, the worker's absorbed duplicates) and wait
    for its ``ready`` line: up to 60 s, a Python start-up on a box loaded by other test runs."""
    proc = system.start(*args, env={"TIERBOX_LOG_LEVEL": "DEBUG"})
    system.wait(lambda: ready in proc.output() or not proc.alive(), timeout=60, what=f"{args[0]} {ready}")
    assert proc.alive(), f"{args[0]} exited:\n{proc.output()[-3000:]}"
    return proc


def absorbed(logs: str) -> int:
    """``worker.duplicate_absorbed`` lines (the worker logs them at DEBUG)."""
    return len(re.findall(r"action=worker\.duplicate_absorbed\b", logs))


def trace(system: System, job_id: uuid.UUID) -> str:
    """What the ledger and the processes' logs say about one job (for a failure message)."""
    attempts = system.q("SELECT attempt, outcome, started_at, finished_at FROM outbox.attempts WHERE job_id = %s "
                        "ORDER BY attempt", job_id)
    lines = [line for line in system.logs().splitlines() if str(job_id) in line]
    return f"job {job_id}: status {system.status(job_id)}, attempts {attempts}, log lines:\n" + "\n".join(lines[-20:])


def assert_each_succeeded_once(system: System, ids: list[uuid.UUID], *, one_attempt: bool) -> None:
    """Every job ``succeeded`` with exactly one effect (and, if ``one_attempt``, one attempt); nothing
    else in the ledger, nothing pending, no dead letter."""
    url = system.settings.database_url
    assert status_counts(url) == {"succeeded": len(ids)}, status_counts(url)
    effects = dict(system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id"))
    missing = [j for j in ids if j not in effects]
    assert not missing, f"{len(missing)} jobs without an effect; {trace(system, missing[0])}"
    twice = [j for j, n in effects.items() if n != 1]
    assert not twice, f"{len(twice)} jobs with their effect recorded twice; {trace(system, twice[0])}"
    if one_attempt:
        attempts = dict(system.q("SELECT job_id, count(*) FROM outbox.attempts GROUP BY job_id"))
        odd = [j for j in ids if attempts.get(j) != 1]
        assert not odd, f"{len(odd)} jobs not attempted exactly once; {trace(system, odd[0])}"
        runs = dict(system.q("SELECT job_id, count(*) FROM public.test_runs GROUP BY job_id"))
        rerun = [j for j in ids if runs.get(j) != 1]  # the handler itself, not only its committed effect
        assert not rerun, f"{len(rerun)} jobs whose handler did not run exactly once; {trace(system, rerun[0])}"
    assert count(url, "SELECT count(*) FROM outbox.pending") == 0, "rows left pending"
    assert count(url, "SELECT count(*) FROM outbox.dead_letters") == 0, "dead letters"


def test_batch_commits_lost_in_a_crash_are_republished_and_run_once(
        pg: PrivatePostgres, crash_settings: Settings, procs: list[Proc], tmp_path: Path) -> None:
    """A relay alone publishes 200 jobs; the server is crashed the moment they all look published.

    The crash must lose batch commits (jobs back in ``pending``, their batch whole); a second relay
    publishes them again and a worker then runs every job's handler exactly once, each copy of a job
    published twice absorbed by the ledger.
    """
    system = System(crash_settings, procs, tmp_path)
    url = crash_settings.database_url
    relay = start(system, "relay", ready="relay.connected")
    with psycopg.connect(url) as conn:  # the producer: one durable commit (synchronous_commit on)
        ids = outbox.enqueue_many(conn, [outbox.job(TASK, args=[f"n{i}"]) for i in range(JOBS)])

    # Published, as another session sees it; the crash follows at once, before a WAL writer round.
    # This connection only reads: no WAL of its own, no flush.
    with psycopg.connect(url, autocommit=True) as watch:
        wait_until(lambda: watch.execute("SELECT count(*) FROM outbox.pending").fetchone() == (0,),
                   timeout=60, interval=0.01, what="the relay publishes every job")
        # WAL inserted but not yet written to the kernel (lost by a server crash), written but not yet
        # flushed (kept by a server crash, lost by an OS crash), in bytes.
        unwritten, unflushed = watch.execute(
            "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), pg_current_wal_lsn()), "
            "pg_wal_lsn_diff(pg_current_wal_lsn(), pg_current_wal_flush_lsn())").fetchone() or (0, 0)
        pg.crash()
    relay.kill(signal.SIGKILL)  # the server is down: the relay cannot write anything any more
    relay.wait()
    batches = re.findall(r"action=relay\.batch_published count=(\d+)", relay.output())
    published_before = queue_depth(crash_settings, TIER)
    assert published_before == JOBS, f"{published_before} messages confirmed before the crash"

    began = time.monotonic()
    pg.start()  # crash recovery
    recovery_s = time.monotonic() - began
    assert "database system was interrupted" in pg.log() or "redo starts" in pg.log(), pg.log()[-2000:]
    lost = count(url, "SELECT count(*) FROM outbox.pending")
    statuses = status_counts(url)
    print(f"at the crash: {unwritten} bytes of WAL unwritten, {unflushed} written but unflushed")
    print(f"{len(batches)} batch commits {batches} before the crash; after crash recovery ({recovery_s:.1f} s) "
          f"{lost} of {JOBS} jobs pending again, statuses {statuses}")
    # The producer's commit was durable: every job survived.
    assert sum(statuses.values()) == JOBS
    # The crash must have lost relay commits, or it proved nothing.
    assert lost > 0, (f"the crash lost no relay commit: the test proved nothing (at the crash {unwritten} bytes "
                      f"of WAL were unwritten; a flush before it?)")
    # A lost batch commit is lost whole: its rows are pending and its jobs are as they were.
    assert statuses.get("pending", 0) == lost and statuses.get("published", 0) == JOBS - lost, statuses
    assert count(url, "SELECT count(*) FROM outbox.pending p JOIN outbox.jobs j ON j.id = p.job_id "
                      "WHERE j.status = 'pending' AND j.published_at IS NULL") == lost

    start(system, "relay", ready="relay.connected")
    wait_until(lambda: count(url, "SELECT count(*) FROM outbox.pending") == 0, timeout=60,
               what="the second relay republishes the lost batch")
    duplicates = queue_depth(crash_settings, TIER) - JOBS
    assert duplicates == lost, f"{duplicates} messages republished for {lost} lost commits"

    worker = start(system, "worker", "--pool", TIER, ready="worker.started")
    system.wait(lambda: status_counts(url) == {"succeeded": JOBS}, timeout=90, what="every job succeeded")
    system.wait(lambda: queue_depth(crash_settings, TIER) == 0, timeout=30, what="every copy consumed")
    assert_each_succeeded_once(system, ids, one_attempt=True)
    skipped = absorbed(worker.output())
    print(f"{lost} jobs' release lost by the crash, {duplicates} jobs published twice, "
          f"{skipped} copies absorbed by the ledger, {JOBS} jobs run once each")
    assert skipped == duplicates, f"{skipped} duplicates absorbed of {duplicates} published"


class Producer(threading.Thread):
    """Enqueues one job per durable commit at a steady rate until stopped, through the crash.

    Keeps what it knows: ``committed`` (the commit returned), ``unknown`` (the connection broke during
    the commit: it may or may not have happened) and the count of transactions that failed before
    their commit (rolled back for sure, their jobs never existed).
    """

    def __init__(self, url: str, interval_s: float) -> None:
        super().__init__(daemon=True, name="producer")
        self.url, self.interval_s = url, interval_s
        self.committed: list[uuid.UUID] = []
        self.unknown: list[uuid.UUID] = []
        self.failed = 0
        self.stopping = threading.Event()

    def run(self) -> None:
        conn: psycopg.Connection[tuple[object, ...]] | None = None
        n = 0
        while not self.stopping.is_set():
            n += 1
            try:
                conn = conn if conn is not None and not conn.closed else psycopg.connect(self.url, connect_timeout=2)
                job_id = outbox.enqueue(conn, TASK, args=[f"p{n}"])
            except psycopg.Error:
                self.failed += 1
                self._close(conn)
                conn = None
                self.stopping.wait(0.1)
                continue
            try:
                conn.commit()
                self.committed.append(job_id)
            except psycopg.Error:
                self.unknown.append(job_id)
                self._close(conn)
                conn = None
            self.stopping.wait(self.interval_s)
        self._close(conn)

    @staticmethod
    def _close(conn: psycopg.Connection[tuple[object, ...]] | None) -> None:
        """Close ``conn`` if there is one; the next enqueue connects again."""
        if conn is not None:
            conn.close()


def test_crash_mid_stream_strands_nothing_and_runs_nothing_twice(
        pg: PrivatePostgres, crash_settings: Settings, procs: list[Proc], tmp_path: Path) -> None:
    """Relay and worker running, jobs enqueued at a steady rate, Postgres crashed mid-stream.

    After the restart (the relay and the worker reconnect by themselves) every job the producer
    committed succeeds with exactly one effect, none is left pending or published, no dead letter.
    Here a worker's start may be lost too (its commit was not yet flushed) or survive while its success
    is lost (then the job runs again after the lease, the effect of the lost run rolled back with it):
    attempts may exceed one, effects may not.
    """
    system = System(crash_settings, procs, tmp_path)
    url = crash_settings.database_url
    relay = start(system, "relay", ready="relay.connected")
    worker = start(system, "worker", "--pool", TIER, ready="worker.started")
    producer = Producer(url, interval_s=0.02)
    producer.start()
    try:
        wait_until(lambda: len(producer.committed) >= 100, timeout=60, what="100 jobs enqueued")
        succeeded_before = status_counts(url).get("succeeded", 0)
        pg.crash()
        time.sleep(1.0)  # down for a second: the relay, the worker and the producer see refused connections
        pg.start()
        wait_until(lambda: len(producer.committed) >= 250, timeout=60, what="the producer enqueues again")
    finally:
        producer.stopping.set()
        producer.join(10)
    assert succeeded_before > 0, "no job had run before the crash: the crash did not hit the stream"
    # A commit interrupted by the crash happened or not: the database says which.
    existing = {r[0] for r in system.q("SELECT id FROM outbox.jobs")}
    unknown_committed = [j for j in producer.unknown if j in existing]
    ids = [*producer.committed, *unknown_committed]
    assert existing == set(ids), f"{len(existing - set(ids))} jobs nobody committed, {len(set(ids) - existing)} lost"
    system.wait(lambda: status_counts(url) == {"succeeded": len(ids)}, timeout=120,
                what=f"every one of {len(ids)} committed jobs succeeded (now {status_counts(url)})")
    system.wait(lambda: queue_depth(crash_settings, TIER) == 0, timeout=30, what="every copy consumed")
    assert_each_succeeded_once(system, ids, one_attempt=False)
    reruns = count(url, "SELECT count(*) FROM (SELECT job_id FROM outbox.attempts GROUP BY job_id "
                        "HAVING count(*) > 1) x")
    handler_reruns = count(url, "SELECT count(*) FROM (SELECT job_id FROM public.test_runs GROUP BY job_id "
                                "HAVING count(*) > 1) x")
    skipped = absorbed(system.logs())
    copies = sum(int(n) for n in re.findall(r"action=relay\.batch_published count=(\d+)", relay.output()))
    assert relay.alive() and worker.alive(), "the relay or the worker did not survive the Postgres crash"
    print(f"{copies} messages the relay published for {len(ids)} jobs ({copies - len(ids)} copies beyond one); "
          f"{skipped} duplicate copies absorbed by the ledger")
    print(f"{len(ids)} jobs committed ({len(unknown_committed)} of {len(producer.unknown)} commits cut by the "
          f"crash did happen, {producer.failed} enqueues failed while the server was down); "
          f"{succeeded_before} succeeded before the crash; "
          f"{reruns} jobs attempted more than once, {handler_reruns} whose handler ran more than once "
          f"(a run whose success the crash lost); every job one effect")
