"""What the broker-fault tests share: queue numbers by passive declare, the API's health, runs per job."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aio_pika
import aiormq
import httpx
import psycopg

import outbox
from tests.api.test_api import READ
from tests.system import System


def queue_stats(url: str, name: str) -> tuple[int, int] | None:
    """(ready messages, consumers) of queue ``name``, or None if it does not exist."""
    async def read() -> tuple[int, int] | None:
        conn = await aio_pika.connect(url, client_properties={"connection_name": "tierbox broker test probe"})
        async with conn:
            channel = await conn.channel()
            try:
                queue = await channel.declare_queue(name, passive=True)
            except aiormq.exceptions.ChannelNotFoundEntity:
                return None
            result: Any = queue.declaration_result
            return int(result.message_count), int(result.consumer_count)
    return asyncio.run(read())


def delete_queue(url: str, name: str) -> None:
    """Delete queue ``name`` (its consumers are cancelled by the broker)."""
    async def delete() -> None:
        conn = await aio_pika.connect(url, client_properties={"connection_name": "tierbox broker test delete"})
        async with conn:
            channel = await conn.channel()
            await channel.queue_delete(name)
    asyncio.run(delete())


def enqueue_effects(system: System, n: int, note: str) -> list[uuid.UUID]:
    """``n`` committed ``sample.effect`` jobs (each run is counted in public.test_runs)."""
    with psycopg.connect(system.settings.database_url) as conn:
        return outbox.enqueue_many(conn, [outbox.job("sample.effect", args=[f"{note}{i}"]) for i in range(n)])


def assert_each_ran_once(system: System, jobs: list[uuid.UUID], timeout: float = 60) -> None:
    """Every job succeeds, and its handler ran exactly once."""
    for job in jobs:
        system.wait_status(job, "succeeded", timeout=timeout)
    runs = dict(system.q("SELECT job_id, count(*) FROM public.test_runs GROUP BY job_id"))
    assert {j: runs.get(j) for j in jobs} == dict.fromkeys(jobs, 1), "every job's handler ran exactly once"


def readyz(base: str) -> tuple[int, dict[str, Any]]:
    """``/readyz``: status code and body."""
    r = httpx.get(f"{base}/readyz", timeout=10)
    return r.status_code, r.json()


def broker_up(base: str) -> str:
    """The ``tierbox_broker_up`` line of the API's ``/metrics``."""
    text = httpx.get(f"{base}/metrics", headers=READ, timeout=10).text
    return next(line for line in text.splitlines() if line.startswith("tierbox_broker_up"))


def broker_errors(base: str) -> list[str | None]:
    """Each tier's ``broker_error`` in ``/admin/tiers``."""
    r = httpx.get(f"{base}/admin/tiers", headers=READ, timeout=10)
    assert r.status_code == 200, r.text
    return [t.get("broker_error") for t in r.json()]
