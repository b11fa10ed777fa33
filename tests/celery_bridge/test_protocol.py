"""The Celery side without a Celery worker: the declaration, and the message the relay publishes.

The message is compared with what Celery itself builds for the same call (``app.amqp.as_task_v2``),
so a Celery upgrade that changes protocol 2 fails here, not in production.
"""

from __future__ import annotations

import json
import uuid

import aio_pika
import msgspec
import psycopg
import pytest
from celery import Celery

import outbox
import tierbox.celery
from outbox.celery import HEADER_QUEUE, JOB_MARKER, celery_task, celery_tasks_from_routes, is_celery_task
from outbox.config import Settings
from outbox.registry import Registry
from tierbox.relay.relay import Relay


def test_celery_task_declares_the_route_in_the_jobs_headers() -> None:
    reg = Registry()
    t = celery_task("app.tasks.send_otp", tier="critical", queue="otp", time_limit=30, soft_time_limit=20,
                    max_retries=5, registry_=reg)
    assert reg.get("app.tasks.send_otp") is t and is_celery_task(t) and t.tier == "critical" and t.max_retries == 5
    spec = outbox.job(t, args=["+4400"], headers={"request_id": "r1", HEADER_QUEUE: "elsewhere"})
    headers = json.loads(spec.headers)
    assert headers == {"request_id": "r1", "x-tierbox-celery-queue": "otp", "x-tierbox-celery-exchange": "",
                       "x-tierbox-celery-routing-key": "otp", "x-tierbox-celery-time-limit": 30.0,
                       "x-tierbox-celery-soft-time-limit": 20.0}  # the route wins over a job's own header
    with pytest.raises(outbox.RegistryError, match="Celery task"):
        t("called directly")


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"queue": ""}, "queue"),
    ({"time_limit": 0}, "time_limit"),
    ({"soft_time_limit": "10"}, "soft_time_limit"),
    ({"routing_key": "other"}, "routing key"),
    ({"tier": None}, "tier"),
    ({"max_retries": -1}, "max_retries"),
], ids=["empty-queue", "zero-time-limit", "str-soft-limit", "key-on-default-exchange", "no-tier", "negative-retries"])
def test_a_bad_declaration_is_a_registry_error_naming_the_field(kwargs: dict[str, object], field: str) -> None:
    options: dict[str, object] = {"tier": "normal", "registry_": Registry(), **kwargs}
    with pytest.raises(outbox.RegistryError, match=field):
        celery_task("app.tasks.x", **options)  # type: ignore[arg-type]


def test_a_bad_header_still_names_headers_for_a_celery_task() -> None:
    t = celery_task("app.tasks.y", tier="normal", registry_=Registry())
    with pytest.raises(outbox.PayloadEncodeError, match="headers"):
        outbox.job(t, headers=["not", "a", "dict"])  # type: ignore[arg-type]


def test_task_routes_declare_one_task_per_route() -> None:
    reg = Registry()
    tasks = celery_tasks_from_routes({"app.tasks.otp": {"queue": "critical"}, "app.tasks.report": {"queue": "bulk"}},
                                     {"critical": "critical", "bulk": "bulk"}, registry_=reg, max_retries=7)
    assert {n: (t.tier, json.loads(outbox.job(t).headers)[HEADER_QUEUE], t.max_retries) for n, t in tasks.items()} == {
        "app.tasks.otp": ("critical", "critical", 7), "app.tasks.report": ("bulk", "bulk", 7)}
    with pytest.raises(outbox.RegistryError, match="pattern"):
        celery_tasks_from_routes({"app.tasks.*": {"queue": "bulk"}}, {"bulk": "bulk"}, registry_=reg)
    with pytest.raises(outbox.RegistryError, match="no tier"):
        celery_tasks_from_routes({"app.tasks.z": {"queue": "unmapped"}}, {"bulk": "bulk"}, registry_=reg)


def test_install_sets_the_base_class_and_refuses_when_too_late() -> None:
    app = Celery("install-test")
    tierbox.celery.install(app, database_url="postgresql://nobody@127.0.0.1/none")

    @app.task(name="x.y")
    def y() -> None: ...

    app.finalize()
    assert isinstance(app.tasks["x.y"], tierbox.celery.LedgerTask)
    late = Celery("late")
    late.finalize()
    with pytest.raises(RuntimeError, match="before any task is used"):
        tierbox.celery.install(late, database_url="postgresql://nobody@127.0.0.1/none")


async def test_the_relay_publishes_what_celery_itself_would_send(settings: Settings, amqp) -> None:
    queue = f"{settings.queue_prefix}inspect"
    ch = await amqp.channel()
    await ch.declare_queue(queue, durable=True)
    t = celery_task("app.tasks.send_otp", tier="critical", queue=queue, time_limit=30, registry_=Registry())
    with psycopg.connect(settings.database_url) as conn:
        job_id = outbox.enqueue(conn, t, args=["+4400", 6], kwargs={"code": "123456"}, priority=9)
    relay = await Relay.connect(settings)
    try:
        assert await relay.drain() == 1
    finally:
        await relay.close()
    message = await (await ch.get_queue(queue, ensure=False)).get(timeout=10)
    try:
        reference = Celery("reference").amqp.as_task_v2(str(job_id), "app.tasks.send_otp", args=["+4400", 6],
                                                         kwargs={"code": "123456"}, time_limit=30)
        # Celery's header set, plus the one marker a worker with tierbox.celery looks for (naming the job).
        assert set(message.headers) == set(reference.headers) | {JOB_MARKER}
        assert message.headers[JOB_MARKER] == str(job_id)
        assert message.headers["id"] == message.headers["root_id"] == str(job_id)
        assert message.headers["task"] == "app.tasks.send_otp" and message.headers["retries"] == 0
        assert message.headers["timelimit"] == [30.0, None] and message.headers["eta"] is None
        assert "123456" not in json.dumps(message.headers)  # no argument value in a header Celery logs
        assert msgspec.json.decode(message.body) == json.loads(json.dumps(reference.body))
        assert (message.correlation_id, message.content_type, message.content_encoding, message.priority) == (
            str(job_id), "application/json", "utf-8", 9)
        assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    finally:
        await ch.queue_delete(queue)


async def test_a_celery_queue_nobody_declared_keeps_the_job_pending(settings: Settings) -> None:
    t = celery_task("app.tasks.lost", tier="normal", queue=f"{settings.queue_prefix}absent-{uuid.uuid4().hex[:6]}",
                    registry_=Registry())
    with psycopg.connect(settings.database_url) as conn:
        job_id = outbox.enqueue(conn, t)
    relay = await Relay.connect(settings)
    try:
        assert await relay.run_once() == 0  # returned by the broker: not published
    finally:
        await relay.close()
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT publish_attempts, last_publish_error FROM outbox.pending WHERE job_id = %s",
                           (job_id,)).fetchone()
        status = conn.execute("SELECT status FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone()
    assert row is not None and row[0] == 1 and "returned by broker" in row[1]
    assert status is not None and status[0] == "pending"


async def test_reconciliation_does_not_take_a_job_waiting_in_a_celery_queue_for_lost(settings: Settings, amqp) -> None:
    """The round counts the tier's own queue; a Celery job waits in a Celery queue, so it is not owed."""
    import msgspec.structs

    from tierbox.relay.reconcile import Reconciler

    quick = msgspec.structs.replace(settings, reconcile_interval_s=1.0, reconcile_grace_s=0.0)
    queue = f"{settings.queue_prefix}waiting"
    ch = await amqp.channel()
    await ch.declare_queue(queue, durable=True)
    t = celery_task("app.tasks.slow_consumer", tier="critical", queue=queue, registry_=Registry())
    with psycopg.connect(settings.database_url) as conn:
        celery_job = outbox.enqueue(conn, t)
    relay = await Relay.connect(quick)
    reconciler = await Reconciler.connect(quick, actor="test-relay")
    try:
        assert await relay.drain() == 1
        assert reconciler.db is not None
        async with reconciler.db.transaction():
            found = await reconciler.round(reconciler.db, ["critical"], force=True)
        assert found.republished == 0 and found.tiers[0].owed == 0
    finally:
        await reconciler.close()
        await relay.close()
        await ch.queue_delete(queue)
    with psycopg.connect(settings.database_url) as conn:
        assert conn.execute("SELECT status FROM outbox.jobs WHERE id = %s", (celery_job,)).fetchone() == ("published",)
        assert conn.execute("SELECT count(*) FROM outbox.republished").fetchone() == (0,)


def test_a_scheduled_celery_task_is_enqueued_by_the_tierbox_scheduler_with_its_route(settings: Settings) -> None:
    """A beat entry with ``expires`` becomes ``schedule=cron(...)``: the run is a Celery job like any other."""
    import datetime as dt

    from tierbox.scheduler.scheduler import Scheduler

    reg = Registry()
    celery_task("app.tasks.health_check", tier="low", queue="low", schedule=outbox.cron("* * * * *"),
                expires=3600, registry_=reg)
    scheduler = Scheduler(settings.psycopg_url, redis_url=settings.redis_url, registry_=reg,
                          key_prefix=settings.queue_prefix)
    try:
        assert scheduler.tick() == 0  # a new schedule starts from now
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute("UPDATE outbox.schedules SET last_due_at = now() - interval '3 minutes'")
        assert scheduler.tick(now=dt.datetime.now(dt.UTC)) == 1
    finally:
        scheduler.redis.close()
        if scheduler._conn is not None:
            scheduler._conn.close()
    with psycopg.connect(settings.database_url) as conn:
        [(task, tier, headers, expires)] = conn.execute(
            "SELECT task, tier, headers, expires_at IS NOT NULL FROM outbox.jobs").fetchall()
    assert (task, tier, headers[HEADER_QUEUE], expires) == ("app.tasks.health_check", "low", "low", True)
