"""A pool's held job ids in Redis, for the relay's reconciler (workers/inflight.py), against real Redis."""

from __future__ import annotations

import uuid

import msgspec
import redis

from outbox.config import Settings
from tests.system import System
from tierbox.workers import inflight


class Message:
    def __init__(self, job_id: uuid.UUID) -> None:
        self.message_id = str(job_id)


def held_in_redis(settings: Settings, tier: str) -> list[str]:
    client = redis.Redis.from_url(settings.redis_url)
    try:
        keys = list(client.scan_iter(match=inflight.pattern(settings.queue_prefix, tier)))
        return sorted(i for v in client.mget(keys) if v for i in v.decode().split(",")) if keys else []
    finally:
        client.close()


async def test_a_reporter_publishes_what_it_holds_with_a_ttl_and_deletes_it_on_close(settings: Settings) -> None:
    odd = msgspec.structs.replace(settings, queue_prefix=settings.queue_prefix + "[*?]")  # glob characters escaped
    reporter = inflight.InflightReporter(odd, "w1", ["critical", "high"])
    a, b, c = Message(uuid.uuid4()), Message(uuid.uuid4()), Message(uuid.uuid4())
    reporter.hold("critical", a)
    reporter.hold("critical", b)
    reporter.hold("high", c)
    reporter.drop(a)
    await reporter.publish()
    assert held_in_redis(odd, "critical") == [b.message_id] and held_in_redis(odd, "high") == [c.message_id]
    assert held_in_redis(settings, "critical") == []  # another prefix sees nothing
    client = redis.Redis.from_url(settings.redis_url)
    try:
        assert 0 < client.ttl(inflight.key(odd.queue_prefix, "critical", "w1")) <= inflight.TTL_S
    finally:
        client.close()
    assert reporter.forget([("high", c)]) == 1
    await reporter.publish()
    assert held_in_redis(odd, "high") == []
    await reporter.close()
    assert held_in_redis(odd, "critical") == []


async def test_a_reporter_without_redis_keeps_quiet_and_working(settings: Settings) -> None:
    reporter = inflight.InflightReporter(msgspec.structs.replace(settings, redis_url="redis://127.0.0.1:1/0"),
                                         "w1", ["high"])
    reporter.hold("high", Message(uuid.uuid4()))
    await reporter.publish()  # logged once, never raised
    await reporter.publish()
    assert len(reporter.held("high")) == 1
    await reporter.close()


def test_a_consuming_pool_publishes_its_running_and_buffered_jobs(system: System) -> None:
    """The urgent pool runs 8 HIGH jobs and buffers 1: those 9 are in its Redis set, the rest in the queue."""
    system.relay()
    jobs = [system.enqueue("sample.sleep", 3, f"held {i}") for i in range(12)]
    worker = system.worker("--pool", "urgent")
    system.wait(lambda: system.q("SELECT count(*) FROM public.test_runs")[0][0] >= 8, what="slots busy")
    system.wait(lambda: len(held_in_redis(system.settings, "high")) == 9, what="9 held in Redis")
    held = held_in_redis(system.settings, "high")
    assert set(held) <= {str(j) for j in jobs}
    worker.stop()
    system.wait(lambda: held_in_redis(system.settings, "high") == [], what="keys deleted on shutdown")
