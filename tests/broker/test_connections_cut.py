"""Connections cut from the broker's side, and the broker's consumer timeout, on the private node.

These used to run ``rabbitmqctl close_all_connections`` and ``application:set_env`` against the
shared node on 127.0.0.1:5672, which cut (or re-timed) every other test's connections too; on the
session's own node (tests/broker/conftest.py) they touch nothing else.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import aio_pika
import msgspec
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests.broker.conftest import PrivateBroker
from tests.helpers import Proc, wait_until
from tests.relay.test_relay import bulk_committed, get_all, pending_count
from tests.system import System

pytestmark = pytest.mark.slow


@pytest.fixture
def private_system(private_settings: Settings, procs: list[Proc], tmp_path: Path) -> System:
    return System(private_settings, procs, tmp_path)


def enqueue_batch(system: System, n: int, note: str) -> list:
    with psycopg.connect(system.settings.database_url) as conn:
        return outbox.enqueue_many(conn, [outbox.job("sample.effect", args=[f"{note}{i}"]) for i in range(n)])


def test_relay_and_worker_survive_postgres_and_broker_connection_loss(private_system: System,
                                                                      private_broker: PrivateBroker) -> None:
    system = private_system
    system.relay()
    system.worker("--pool", "urgent", "--concurrency", "4")
    jobs = enqueue_batch(system, 150, "a")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_effects")[0][0] >= 30, timeout=30,
                what="work under way")
    killed = system.q("""SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
                         WHERE datname = current_database() AND pid <> pg_backend_pid()""")[0][0]
    assert killed >= 2
    private_broker.ctl("close_all_connections", "resilience test")
    jobs += enqueue_batch(system, 100, "b")
    for job in jobs:
        system.wait_status(job, "succeeded", timeout=90)
    per_job = dict(system.q("SELECT job_id, count(*) FROM public.test_effects GROUP BY job_id"))
    assert all(per_job.get(j) == 1 for j in jobs), "every job has exactly one effect"
    assert system.q("SELECT count(*) FROM outbox.pending") == [(0,)]
    assert system.q("SELECT count(*) FROM outbox.leases") == [(0,)]


async def test_relay_survives_broker_closing_connections(private_settings: Settings, private_broker: PrivateBroker,
                                                         procs: list[Proc], tmp_path: Path) -> None:
    settings = private_settings
    relay = Proc(["relay"], settings, tmp_path / "relay.log")
    procs.append(relay)
    bulk_committed(settings.database_url, "sample.export", 3000)
    wait_until(lambda: pending_count(settings.database_url) < 3000, timeout=20, what="relay started publishing")
    private_broker.ctl("close_all_connections", "tierbox chaos test")
    bulk_committed(settings.database_url, "sample.export", 1000)
    wait_until(lambda: pending_count(settings.database_url) == 0, timeout=60, what="all rows published")
    conn = await aio_pika.connect(settings.amqp_url)
    async with conn:
        msgs = await get_all(conn, settings.queue_name("bulk"))
    ids = {m.message_id for m in msgs}
    with psycopg.connect(settings.database_url) as db:
        all_ids = {str(r[0]) for r in db.execute("SELECT id FROM outbox.jobs")}
    assert ids == all_ids  # every row arrived (duplicates allowed, none missing)
    assert "relay.disconnected" in relay.output() or "relay.connect_failed" in relay.output()
    relay.kill(signal.SIGTERM)
    assert relay.wait() == 0


@pytest.fixture
def short_consumer_timeout(private_broker: PrivateBroker) -> Iterator[None]:
    # consumer_timeout is checked on each channel's tick, every 60 s on 3.10: a channel opened after
    # channel_tick_interval is set ticks every second instead, so a few seconds span several checks.
    private_broker.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 1000).")
    private_broker.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1000).")
    yield
    private_broker.ctl("eval", "application:set_env(rabbit, consumer_timeout, 1800000).")
    private_broker.ctl("eval", "application:set_env(rabbit, channel_tick_interval, 60000).")


async def _unacked_consumer_is_closed(url: str, queue_name: str) -> bool:
    """A consumer that holds a message unacked: True if the broker closes its channel within 15 s."""
    connection = await aio_pika.connect(url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"held"), routing_key=queue_name)
        held: list[aio_pika.abc.AbstractIncomingMessage] = []
        await queue.consume(held.append)  # never acked
        for _ in range(150):
            if channel.is_closed:
                return bool(held)
            await asyncio.sleep(0.1)
        return False
    finally:
        await connection.close()


def test_long_job_outlives_the_brokers_consumer_timeout(private_system: System, private_broker: PrivateBroker,
                                                        short_consumer_timeout: None) -> None:
    # The control: on this node a message held unacked past the 1 s timeout gets its channel closed.
    assert asyncio.run(_unacked_consumer_is_closed(private_broker.url, "consumer-timeout-control"))
    system = private_system
    system.relay()
    slow = msgspec.structs.replace(system.settings, lease_s=5.0, reaper_interval_s=1.0)
    worker = system.worker("--pool", "deferred", settings=slow)
    job = system.enqueue("sample.long", 8.0)  # eight ticks, eight times the timeout
    system.wait_status(job, "succeeded", timeout=60)
    assert system.outcomes(job) == ["succeeded"]
    assert len(system.effects(job)) == 1
    assert worker.alive()
    # Acked once its lease was recorded, the message never sat unacked past the timeout: no channel was closed.
    assert "worker.disconnected" not in worker.output()
