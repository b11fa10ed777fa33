"""``make demo`` (``python -m examples.demo``): the whole path on this machine, narrated.

Starts a relay and the four worker pools as real processes, enqueues sample
jobs in every tier inside transactions (one of them rolled back), waits for
them, redrives the dead letter after "fixing" its cause, prints the ledger.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import click
import psycopg

import outbox
from examples.demo import tasks as demo_tasks
from outbox.config import Settings

POOLS = ("urgent", "normal", "deferred", "calls")
WAIT_S = 60.0


def _spawn(args: list[str], settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TIERBOX_DATABASE_URL": settings.database_url, "TIERBOX_AMQP_URL": settings.amqp_url,
           "TIERBOX_QUEUE_PREFIX": settings.queue_prefix, "TIERBOX_APP": "examples.demo.tasks",
           "TIERBOX_LOG_LEVEL": os.environ.get("TIERBOX_LOG_LEVEL", "WARNING")}
    return subprocess.Popen([sys.executable, "-m", "tierbox.cli", *args], env=env)


def _wait_for_consumers(settings: Settings) -> None:
    """Block until every tier queue has a consumer (the pools are up), at most WAIT_S."""
    import asyncio

    import aiormq

    from outbox._brokers import connect  # every node of a comma-separated TIERBOX_AMQP_URL, as the processes

    async def ready() -> bool:
        conn = await connect(settings.amqp_url)
        async with conn:
            for tier in settings.topology.tiers:
                channel = await conn.channel()
                try:
                    queue = await channel.declare_queue(settings.queue_name(tier), passive=True)
                except aiormq.exceptions.ChannelNotFoundEntity:
                    return False
                if not queue.declaration_result.consumer_count:
                    return False
        return True

    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and not asyncio.run(ready()):
        time.sleep(0.2)


def _enqueue_samples(conn: psycopg.Connection[Any]) -> dict[str, uuid.UUID]:
    jobs: dict[str, uuid.UUID] = {}
    event_key = f"stripe:evt_{uuid.uuid4().hex[:8]}"  # unique per run: a rerun is a new webhook
    with conn.transaction():  # the business transaction: commit => jobs exist
        jobs["otp"] = outbox.enqueue(conn, demo_tasks.send_otp, args=["+39 333 000 0000"], expires=60)
        jobs["webhook"] = outbox.enqueue(conn, demo_tasks.payment_webhook, args=["evt_1"],
                                         idempotency_key=event_key)
        jobs["webhook (same key)"] = outbox.enqueue(conn, demo_tasks.payment_webhook, args=["evt_1"],
                                                    idempotency_key=event_key)
        jobs["invoice"] = outbox.enqueue(conn, demo_tasks.generate_invoice, args=[42])
        jobs["calendar"] = outbox.enqueue(conn, demo_tasks.sync_calendar, args=[7])
        jobs["export"] = outbox.enqueue(conn, demo_tasks.export_contacts, args=[50_000])
        jobs["call summary"] = outbox.enqueue(conn, demo_tasks.call_summary, args=[99])
        jobs["flaky provider"] = outbox.enqueue(conn, demo_tasks.flaky_provider, args=[42])
        jobs["needs fix"] = outbox.enqueue(conn, demo_tasks.needs_fix, args=[42])
    try:
        with conn.transaction():
            rolled_back = outbox.enqueue(conn, demo_tasks.send_otp, args=["+39 333 111 1111"])
            raise RuntimeError("the business transaction failed")
    except RuntimeError:
        jobs["rolled back otp"] = rolled_back
    return jobs


def _status(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> str:
    row = conn.execute("SELECT status FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone()
    return row[0] if row else "never existed"


def _wait(conn: psycopg.Connection[Any], job_ids: list[uuid.UUID], statuses: set[str]) -> bool:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if all(_status(conn, j) in statuses for j in job_ids):
            return True
        time.sleep(0.2)
    return False


def _print_ledger(conn: psycopg.Connection[Any], jobs: dict[str, uuid.UUID]) -> None:
    click.echo(f"\n{'job':<20} {'tier':<9} {'status':<14} {'attempts':>8} {'commit->start ms':>17}")
    for label, job_id in jobs.items():
        row = conn.execute(
            "SELECT tier, status, attempts, EXTRACT(EPOCH FROM (started_at - enqueued_at)) * 1000 "
            "FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone()
        if row is None:
            click.echo(f"{label:<20} {'-':<9} {'never existed':<14} {'-':>8} {'-':>17}")
            continue
        wait = f"{row[3]:.1f}" if row[3] is not None else "-"
        click.echo(f"{label:<20} {row[0]:<9} {row[1]:<14} {row[2]:>8} {wait:>17}")


def run(settings: Settings) -> int:
    """Run the demo; returns the exit code (0 when every job ended as expected)."""
    procs = [_spawn(["relay"], settings)] + [_spawn(["worker", "--pool", p], settings) for p in POOLS]
    try:
        with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
            conn.execute(f"DROP TABLE IF EXISTS {demo_tasks.FIX_TABLE}")
            conn.execute(f"CREATE TABLE {demo_tasks.FIX_TABLE} (fixed boolean)")
            _wait_for_consumers(settings)
            click.echo("relay + pools " + ", ".join(POOLS) + " started; enqueueing one job per tier ...")
            jobs = _enqueue_samples(conn)
            ok = _wait(conn, [j for k, j in jobs.items() if k != "rolled back otp"], {"succeeded", "dead"})
            click.echo("dead letter of 'needs fix': "
                       + str(conn.execute("SELECT reason, error_message FROM outbox.dead_letters WHERE job_id = %s",
                                          (jobs["needs fix"],)).fetchone()))
            conn.execute(f"INSERT INTO {demo_tasks.FIX_TABLE} VALUES (true)")
            jobs["needs fix, redriven"] = outbox.redrive(conn, jobs["needs fix"], by="demo", reason="VAT fixed")
            ok = _wait(conn, [jobs["needs fix, redriven"]], {"succeeded"}) and ok
            _print_ledger(conn, jobs)
            expected_dead = _status(conn, jobs["needs fix"]) == "dead"
            unique = jobs["webhook"] == jobs["webhook (same key)"]
            click.echo(f"\nidempotency key gave one job: {unique}; rolled-back job exists: "
                       f"{_status(conn, jobs['rolled back otp']) != 'never existed'}")
            return 0 if ok and expected_dead and unique else 1
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                p.kill()
