"""The relay against real Postgres and RabbitMQ, with a plain consumer on the other side."""

from __future__ import annotations

import asyncio
import datetime as dt
import signal
import uuid
from pathlib import Path

import aio_pika
import aiormq
import msgspec
import psycopg
import pytest

import outbox
from outbox._encoding import HEADER_ATTEMPT, HEADER_TASK, decode_envelope, decode_payload
from outbox.config import Settings
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.helpers import Proc, free_port, scrape, wait_until, wait_until_async
from tierbox.relay import Relay


def enqueue_committed(db_url: str, task: str, n: int = 1, **kw: object) -> list[uuid.UUID]:
    with psycopg.connect(db_url) as conn:
        ids = [outbox.enqueue(conn, task, **kw) for _ in range(n)]  # type: ignore[arg-type]
    return ids


def bulk_committed(db_url: str, task: str, n: int) -> None:
    with psycopg.connect(db_url) as conn:
        outbox.enqueue_many(conn, [outbox.job(task, args=[i]) for i in range(n)])


async def queue_depth(amqp: aio_pika.abc.AbstractConnection, name: str) -> int:
    ch = await amqp.channel()
    try:
        q = await ch.declare_queue(name, passive=True)
    except aiormq.exceptions.ChannelNotFoundEntity:
        return 0  # not declared yet
    count = q.declaration_result.message_count
    await ch.close()
    return int(count or 0)


async def get_all(amqp: aio_pika.abc.AbstractConnection, name: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    ch = await amqp.channel()
    q = await ch.declare_queue(name, passive=True)
    out = []
    while (m := await q.get(no_ack=True, fail=False)) is not None:
        out.append(m)
    await ch.close()
    return out


def pending_count(db_url: str) -> int:
    with psycopg.connect(db_url) as conn:
        return conn.execute("SELECT count(*) FROM outbox.pending").fetchone()[0]  # type: ignore[index]


async def test_commit_publishes_one_message_with_priority_and_headers(settings: Settings, amqp) -> None:
    [job_id] = enqueue_committed(settings.database_url, "sample.otp", args=["+39 555"],
                                 headers={"traceparent": "00-abc-def-01"})
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == 1
    finally:
        await relay.close()
    [msg] = await get_all(amqp, settings.queue_name("critical"))
    assert msg.message_id == str(job_id)
    assert msg.priority == 10
    assert msg.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert msg.headers[HEADER_TASK] == "sample.otp"
    assert msg.headers[HEADER_ATTEMPT] == 1
    assert msg.headers["traceparent"] == "00-abc-def-01"
    env = decode_envelope(msg.body)
    assert env.id == job_id and env.tier == "critical"
    assert decode_payload(env.payload).args == ["+39 555"]
    with psycopg.connect(settings.database_url) as conn:
        status, published_at = conn.execute("SELECT status, published_at FROM outbox.jobs WHERE id = %s",
                                            (job_id,)).fetchone()  # type: ignore[misc]
    assert status == "published" and published_at is not None
    assert pending_count(settings.database_url) == 0


async def test_rollback_publishes_nothing(settings: Settings, amqp) -> None:
    with psycopg.connect(settings.database_url) as conn:
        outbox.enqueue(conn, "sample.otp", args=["x"])
        conn.rollback()
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == 0
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("critical")) == 0


async def test_calls_lane_uses_task_priority(settings: Settings, amqp) -> None:
    enqueue_committed(settings.database_url, "sample.call_summary", args=[1])
    enqueue_committed(settings.database_url, "sample.call_recording", args=[1])
    relay = await Relay.connect(settings)
    try:
        await relay.drain()
    finally:
        await relay.close()
    msgs = await get_all(amqp, settings.queue_name("calls"))
    # The broker's priority queue hands out the recording (9) before the summary (3).
    assert [m.priority for m in msgs] == [9, 3]


async def test_critical_claimed_before_bulk_backlog(settings: Settings, amqp) -> None:
    bulk_committed(settings.database_url, "sample.export", 3000)
    [critical] = enqueue_committed(settings.database_url, "sample.otp", args=["now"])
    relay = await Relay.connect(msgspec.structs.replace(settings, relay_batch_size=50))
    try:
        assert await relay.run_once() == 50
    finally:
        await relay.close()
    [msg] = await get_all(amqp, settings.queue_name("critical"))
    assert msg.message_id == str(critical)
    assert await queue_depth(amqp, settings.queue_name("bulk")) == 49


async def test_delayed_job_waits_until_due(settings: Settings, amqp) -> None:
    enqueue_committed(settings.database_url, "sample.webhook", args=["e"], delay=1.5)
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == 0
        due_in = await relay.next_due_in()
        assert due_in is not None and 0 < due_in <= 1.5
        await wait_until_async(relay.run_once, timeout=5, what="delayed job published")
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("high")) == 1


async def test_expired_job_is_marked_not_published(settings: Settings, amqp) -> None:
    past = dt.datetime.now(dt.UTC) + dt.timedelta(milliseconds=200)
    [job_id] = enqueue_committed(settings.database_url, "sample.webhook", args=["e"], expires=past)
    await asyncio.sleep(0.3)
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == 1
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("high")) == 0
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT status FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone() == ("expired",)


async def test_unroutable_message_stays_pending(settings: Settings, amqp) -> None:
    [job_id] = enqueue_committed(settings.database_url, "sample.invoice", args=[1])
    relay = await Relay.connect(settings)
    try:
        ch = await amqp.channel()
        queue = await ch.declare_queue(settings.queue_name("normal"), passive=True)
        await queue.unbind(settings.exchange_name, routing_key="normal")
        assert await relay.run_once() == 0
        with psycopg.connect(settings.database_url) as conn:
            attempts, error = conn.execute(
                "SELECT publish_attempts, last_publish_error FROM outbox.pending WHERE job_id = %s", (job_id,)
            ).fetchone()  # type: ignore[misc]
        assert attempts == 1 and "returned" in error
        await queue.bind(settings.exchange_name, routing_key="normal")
        await wait_until_async(relay.run_once, timeout=5, what="republished after rebinding")
    finally:
        await relay.close()
    assert await queue_depth(amqp, settings.queue_name("normal")) == 1


async def test_two_relays_share_a_backlog(settings: Settings, amqp) -> None:
    bulk_committed(settings.database_url, "sample.invoice", 2000)
    small = msgspec.structs.replace(settings, relay_batch_size=100)
    a, b = await Relay.connect(small), await Relay.connect(small)
    try:
        done = await asyncio.gather(a.drain(), b.drain())
    finally:
        await a.close()
        await b.close()
    assert sum(done) == 2000 and all(n > 0 for n in done)
    assert pending_count(settings.database_url) == 0
    msgs = await get_all(amqp, settings.queue_name("normal"))
    assert len({m.message_id for m in msgs}) == 2000 == len(msgs)


@pytest.mark.slow
async def test_relay_killed_between_confirm_and_commit_republishes(settings: Settings, amqp, procs, tmp_path: Path):
    [job_id] = enqueue_committed(settings.database_url, "sample.invoice", args=[7])
    first = Proc(["relay"], settings, tmp_path / "relay1.log",
                 {"TIERBOX_FAULT_RELAY_PAUSE_BEFORE_COMMIT_S": "60"})
    procs.append(first)
    await wait_until_async(lambda: queue_depth(amqp, settings.queue_name("normal")), timeout=20,
                           what="confirmed publish")
    first.kill(signal.SIGKILL)
    first.wait()
    assert pending_count(settings.database_url) == 1  # the claim rolled back with the dead relay
    second = Proc(["relay"], settings, tmp_path / "relay2.log")
    procs.append(second)
    wait_until(lambda: pending_count(settings.database_url) == 0, timeout=20, what="second relay publishes")
    msgs = await get_all(amqp, settings.queue_name("normal"))
    assert [m.message_id for m in msgs] == [str(job_id), str(job_id)]  # at least once: a duplicate, no loss
    second.kill(signal.SIGTERM)
    assert second.wait() == 0


async def test_topology_mismatch_is_reported_with_the_fix(settings: Settings, amqp) -> None:
    ch = await amqp.channel()
    await ch.declare_queue(settings.queue_name("critical"), durable=True, arguments={"x-queue-type": "quorum"})
    with pytest.raises(outbox.TopologyMismatchError, match="rabbitmqctl delete_queue"):
        await Relay.connect(settings)


def test_relay_serves_its_counters_on_metrics_port(settings: Settings, procs, tmp_path: Path) -> None:
    port = free_port()
    bulk_committed(settings.database_url, "sample.invoice", 3)
    relay = Proc(["relay", "--metrics-port", str(port)], settings, tmp_path / "relay.log")
    procs.append(relay)
    wait_until(lambda: pending_count(settings.database_url) == 0, timeout=20, what="published")
    body = wait_until(lambda: scrape(port), timeout=10, what="metrics served")
    assert 'tierbox_relay_published_total{tier="normal"} 3.0' in body
    assert "tierbox_relay_batch_seconds_count" in body



def test_only_urgent_rows_notify_the_relay(db_url: str) -> None:
    """The trigger NOTIFYs for tiers marked notify (urgent ones) and for tiers it does not know."""
    from outbox._maintenance import sync_tiers
    from outbox.tiers import DEFAULT_TOPOLOGY

    with psycopg.connect(db_url, autocommit=True) as conn:
        sync_tiers(conn, DEFAULT_TOPOLOGY)
    assert {t for t, spec in DEFAULT_TOPOLOGY.tiers.items() if spec.urgent} == {"critical", "high", "calls"}

    def notified_by(task: str | None, tier_sql: str | None = None) -> int:
        with psycopg.connect(db_url, autocommit=True) as listener:
            listener.execute("LISTEN tierbox_pending")
            if task is not None:
                enqueue_committed(db_url, task, args=[1])
            else:
                with psycopg.connect(db_url) as conn:  # a tier the mirror has never heard of
                    job = conn.execute(
                        "INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries) "
                        "VALUES (gen_random_uuid(), 't', %s, 1, '{}', 0) RETURNING id", (tier_sql,)).fetchone()
                    conn.execute("INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at) "
                                 "VALUES (%s, %s, 1, 1, now())", (job[0], tier_sql))  # type: ignore[index]
            return len(list(listener.notifies(timeout=0.5)))

    assert notified_by("sample.otp") == 1  # critical
    assert notified_by("sample.call_summary") == 1  # calls
    assert notified_by("sample.invoice") == 0  # normal: the main lane's poll finds it
    assert notified_by("sample.export") == 0  # bulk
    assert notified_by(None, "brand_new_tier") == 1


@pytest.mark.slow
async def test_urgent_lane_publishes_past_a_batch_in_flight(settings: Settings, amqp, procs, tmp_path: Path):
    """A critical row is published while the main lane sits on a confirmed, uncommitted batch."""
    [held] = enqueue_committed(settings.database_url, "sample.invoice", args=[1])
    relay = Proc(["relay"], settings, tmp_path / "relay.log", {"TIERBOX_FAULT_RELAY_PAUSE_BEFORE_COMMIT_S": "60"})
    procs.append(relay)
    await wait_until_async(lambda: queue_depth(amqp, settings.queue_name("normal")), timeout=20,
                           what="the main lane's batch confirmed (and now held before its commit)")
    [urgent] = enqueue_committed(settings.database_url, "sample.otp", args=[2])
    await wait_until_async(lambda: queue_depth(amqp, settings.queue_name("critical")), timeout=10,
                           what="the urgent lane publishes the critical row")

    def marks() -> dict[object, bool]:
        with psycopg.connect(settings.database_url) as conn:
            return dict(conn.execute("SELECT id, published_at IS NOT NULL FROM outbox.jobs").fetchall())

    # The message is in the queue once confirmed; the urgent lane marks the row a moment later, at its commit.
    published = wait_until(lambda: (m := marks())[urgent] and m, timeout=10, what="the urgent lane's commit")
    assert published == {urgent: True, held: False}  # the held batch is still uncommitted
    relay.kill(signal.SIGKILL)
    relay.wait()
    assert pending_count(settings.database_url) == 1  # the held row is still owed: it will be republished


@pytest.mark.slow
async def test_lanes_in_processes_of_their_own(settings: Settings, amqp, procs, tmp_path: Path):
    """--lane urgent alone declares the topology and publishes only urgent rows; --lane main the rest."""
    [normal] = enqueue_committed(settings.database_url, "sample.invoice", args=[1])
    urgent_relay = Proc(["relay", "--lane", "urgent"], settings, tmp_path / "urgent.log")
    procs.append(urgent_relay)
    [critical] = enqueue_committed(settings.database_url, "sample.otp", args=[2])
    await wait_until_async(lambda: queue_depth(amqp, settings.queue_name("critical")), timeout=20,
                           what="the urgent-lane process declares the queues and publishes the critical row")
    await asyncio.sleep(1.0)  # four of the main lane's polls: the urgent process must leave the normal row alone
    assert await queue_depth(amqp, settings.queue_name("normal")) == 0
    with psycopg.connect(settings.database_url) as conn:
        assert [r[0] for r in conn.execute("SELECT job_id FROM outbox.pending").fetchall()] == [normal]
    main_relay = Proc(["relay", "--lane", "main"], settings, tmp_path / "main.log")
    procs.append(main_relay)
    await wait_until_async(lambda: queue_depth(amqp, settings.queue_name("normal")), timeout=20,
                           what="the main-lane process publishes the normal row")
    async def drained() -> bool:
        return pending_count(settings.database_url) == 0

    await wait_until_async(drained, timeout=10, what="the main lane commits its batch")
    assert "lane=urgent" in urgent_relay.output() and "lane=main" in main_relay.output()
    with psycopg.connect(settings.database_url) as conn:
        stamped = dict(conn.execute("SELECT id, published_at IS NOT NULL FROM outbox.jobs").fetchall())
    assert stamped == {critical: True, normal: True}


def test_relay_frames_are_what_aio_pika_would_send() -> None:
    """The relay publishes through aiormq with pre-built properties; the header frame must be
    byte-for-byte the one aio-pika builds from build_message (user trace headers kept, others not)."""
    from pamqp.header import ContentHeader

    from tierbox.relay.relay import build_message, build_publish

    job = uuid.uuid4()
    at = dt.datetime(2026, 11, 24, 5, 0, tzinfo=dt.UTC)
    for headers in ("{}", '{"traceparent": "00-abc-01", "secret": "not forwarded"}'):
        args = (job, "sample.invoice", "normal", 5, '{"args": [1], "kwargs": {}}', headers, 2, at)
        body, properties = build_publish(*args)
        message = build_message(*args)
        assert body == message.body
        direct = ContentHeader(properties=properties, body_size=len(body)).marshal()
        via_aio_pika = ContentHeader(properties=message.properties, body_size=len(body)).marshal()
        assert direct == via_aio_pika
        assert properties.headers is not None and "secret" not in properties.headers
        assert properties.delivery_mode == 2 and properties.message_id == str(job)
