"""A real Celery 5 worker process and a real relay, shared by the tests of a module (starting a Celery
worker costs seconds on a loaded box). Each module gets its own database (cloned from the migrated
template) and its own queue names; tests tell their jobs apart by job id.

The worker runs ``-P solo --without-gossip --without-mingle --without-heartbeat``: one process, no
cluster chatter (nothing here uses remote control), which only shortens start-up.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aio_pika
import psycopg
import pytest

import outbox
from outbox.config import Settings
from outbox.registry import Registry
from tests.celery_bridge.celery_app import EFFECTS_DDL
from tests.conftest import _clone, _drop, _with_db
from tests.helpers import ROOT, Proc, delete_broker_objects, settings_env, wait_until


class CeleryWorker:
    """``celery -A tests.celery_bridge.celery_app worker`` on one queue, its output in a log file."""

    def __init__(self, settings: Settings, queue: str, log_path: Path) -> None:
        env = settings_env(settings)
        env.update(TB_CELERY_QUEUE=queue, TB_CELERY_BROKER=settings.amqp_url, PYTHONPATH=str(ROOT),
                   TB_LEASE_MARGIN_S="1", TB_REAP_EVERY_S="1")
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_bridge.celery_app", "worker", "-P", "solo",
             "-Q", queue, "-n", f"tbtest-{queue}@%h", "-l", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)  # warm shutdown: the running task finishes
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self._log.close()


class Bridge:
    """The module's database, queue, Celery worker and relay, and readers of the ledger and effects."""

    def __init__(self, settings: Settings, tmp: Path) -> None:
        self.settings = settings
        self.tmp = tmp
        self.queue = f"{settings.queue_prefix}celery"
        self.registry = Registry()
        self.procs: list[Proc] = []
        self.worker: CeleryWorker | None = None
        self.relay: Proc | None = None
        self.tasks = {name: outbox.celery_task(name, tier="normal", queue=self.queue, max_retries=retries,
                                               registry_=self.registry)
                      for name, retries in (("tbtest.effect", 3), ("tbtest.flaky", 2), ("tbtest.retry_twice", 5),
                                                ("tbtest.refuse", 3))}
        # time_limit 1 s: with the 1 s lease margin, a killed run's lease expires 2 s after it started.
        self.tasks["tbtest.sleepy"] = outbox.celery_task("tbtest.sleepy", tier="normal", queue=self.queue,
                                                         time_limit=1, registry_=self.registry)

    def start_worker(self) -> CeleryWorker:
        self.worker = CeleryWorker(self.settings, self.queue, self.tmp / f"celery{len(self.procs)}-{uuid.uuid4().hex[:4]}.log")
        wait_until(lambda: " ready." in self.worker.output() or self.worker.popen.poll() is not None,  # type: ignore[union-attr]
                   timeout=60, what="celery worker ready")
        assert self.worker.popen.poll() is None, self.worker.output()[-3000:]
        return self.worker

    def start_relay(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(["relay"], self.settings, self.tmp / f"relay{len(self.procs)}.log", env)
        self.procs.append(proc)
        wait_until(lambda: "relay.connected" in proc.output() or not proc.alive(), timeout=30, what="relay connected")
        return proc

    def enqueue(self, task: str, *args: Any, **options: Any) -> uuid.UUID:
        with psycopg.connect(self.settings.database_url) as conn:
            return outbox.enqueue(conn, self.tasks[task], args=list(args), **options)

    def q(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def status(self, job_id: uuid.UUID) -> str:
        rows = self.q("SELECT status FROM outbox.jobs WHERE id = %s", job_id)
        return str(rows[0][0]) if rows else "missing"

    def wait_status(self, job_id: uuid.UUID, status: str, timeout: float = 45) -> None:
        try:
            wait_until(lambda: self.status(job_id) == status, timeout=timeout, what=f"job {job_id} {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (now {self.status(job_id)}); logs:\n{self.logs()[-6000:]}") from None

    def outcomes(self, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
        """(attempt, outcome, error_type, worker_id prefix) of each attempt, in order."""
        return self.q("SELECT attempt, outcome, error_type, split_part(worker_id, ':', 1) FROM outbox.attempts "
                      "WHERE job_id = %s ORDER BY attempt", job_id)

    def effects(self, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
        """(note, retries) of each run the Celery worker made of this job, in order."""
        return self.q("SELECT note, retries FROM public.celery_effects WHERE task_id = %s ORDER BY at", str(job_id))

    def logs(self) -> str:
        parts = [f"--- relay {p.args}\n{p.output()}" for p in self.procs]
        if self.worker is not None:
            parts.append(f"--- celery worker\n{self.worker.output()}")
        return "\n".join(parts)

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        if self.worker is not None:
            self.worker.stop()


def delete_celery_objects(settings: Settings, queue: str) -> None:
    """The Celery queue and the direct exchange of the same name the Celery worker declared."""

    async def clean() -> None:
        conn = await aio_pika.connect(settings.amqp_url, client_properties={"connection_name": "cleanup celery"})
        async with conn:
            for kind in ("queue", "exchange"):
                ch = await conn.channel()
                try:
                    await (ch.queue_delete(queue) if kind == "queue" else ch.exchange_delete(queue))
                except Exception:  # noqa: BLE001 - already gone is what we want
                    pass
                if not ch.is_closed:
                    await ch.close()

    asyncio.run(clean())


@pytest.fixture(scope="module")
def bridge(service_urls: dict[str, str], template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """A database, a Celery worker and a relay for the module's tests."""
    admin = service_urls["postgres"]
    name = _clone(admin, template_db)
    settings = Settings(
        database_url=_with_db(admin, name), amqp_url=service_urls["rabbitmq"], redis_url=service_urls["redis"],
        queue_prefix=f"t{uuid.uuid4().hex[:8]}.", relay_poll_interval_s=0.2, relay_retry_delay_s=0.2,
        lease_s=2.0, reaper_interval_s=0.5, app="sample_tasks",
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(EFFECTS_DDL)
    b = Bridge(settings, tmp_path_factory.mktemp("celery_bridge"))
    try:
        b.start_worker()
        b.relay = b.start_relay()
        yield b
    finally:
        b.close()
        delete_celery_objects(settings, b.queue)
        delete_broker_objects(settings, "cleanup celery_bridge")
        _drop(admin, name)



