"""A small harness for end-to-end tests: starts relays and workers, reads the ledger."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aio_pika
import psycopg

import outbox
from outbox.config import Settings
from tests import sample_tasks
from tests.helpers import Proc, wait_until


class System:
    """Starts relays and workers for one test and reads the ledger."""

    def __init__(self, settings: Settings, procs: list[Proc], tmp_path: Path) -> None:
        self.settings = settings
        self.procs = procs
        self.tmp_path = tmp_path
        self.n = 0
        with psycopg.connect(settings.database_url, autocommit=True) as conn:
            conn.execute(sample_tasks.EFFECTS_DDL)

    def start(self, *args: str, env: dict[str, str] | None = None, settings: Settings | None = None) -> Proc:
        self.n += 1
        proc = Proc(list(args), settings or self.settings, self.tmp_path / f"{args[0]}{self.n}.log", env)
        self.procs.append(proc)
        return proc

    def relay(self) -> Proc:
        proc = self.start("relay")
        self.wait(lambda: "relay.connected" in proc.output(), what="relay connected")
        return proc

    def worker(self, *args: str, ready: bool = True, **kw: Any) -> Proc:
        proc = self.start("worker", *(args or ("--pool", "urgent")), **kw)
        if ready:
            self.wait(lambda: "worker.started" in proc.output() or not proc.alive(), what="worker started")
        return proc

    def enqueue(self, task: str, *args: Any, **kw: Any) -> uuid.UUID:
        with psycopg.connect(self.settings.database_url) as conn:
            return outbox.enqueue(conn, task, args=list(args), **kw)

    def q(self, sql: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.settings.database_url) as conn:
            return conn.execute(sql, params).fetchall()

    def wait(self, predicate: Callable[[], Any], timeout: float = 20, what: str = "") -> Any:
        try:
            return wait_until(predicate, timeout=timeout, what=what)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; logs:\n{self.logs()[-5000:]}") from None

    def status(self, job_id: uuid.UUID) -> str:
        rows = self.q("SELECT status FROM outbox.jobs WHERE id = %s", job_id)
        return rows[0][0] if rows else "missing"

    def wait_status(self, job_id: uuid.UUID, status: str, timeout: float = 30) -> None:
        try:
            wait_until(lambda: self.status(job_id) == status, timeout=timeout, what=f"job {job_id} {status}")
        except AssertionError as exc:
            raise AssertionError(f"{exc} (now {self.status(job_id)}); logs:\n{self.logs()[-4000:]}") from None

    def outcomes(self, job_id: uuid.UUID) -> list[str | None]:
        return [r[0] for r in self.q("SELECT outcome FROM outbox.attempts WHERE job_id = %s ORDER BY attempt", job_id)]

    def effects(self, job_id: uuid.UUID) -> list[tuple[Any, ...]]:
        return self.q("SELECT attempt, note FROM public.test_effects WHERE job_id = %s ORDER BY at", job_id)

    def runs(self, job_id: uuid.UUID) -> int:
        return self.q("SELECT count(*) FROM public.test_runs WHERE job_id = %s", job_id)[0][0]

    def dead_letter(self, job_id: uuid.UUID) -> dict[str, Any]:
        with psycopg.connect(self.settings.database_url) as conn:
            cur = conn.execute("SELECT * FROM outbox.dead_letters WHERE job_id = %s", (job_id,))
            row = cur.fetchone()
            assert row is not None, f"no dead letter for {job_id}"
            return dict(zip([d.name for d in cur.description or []], row, strict=True))

    def logs(self) -> str:
        return "\n".join(f"--- {p.args}\n{p.output()}" for p in self.procs)

    async def publish_raw(self, tier: str, body: bytes, **props: Any) -> None:
        conn = await aio_pika.connect(self.settings.amqp_url)
        async with conn:
            ch = await conn.channel()
            await ch.default_exchange.publish(aio_pika.Message(body=body, **props),
                                              routing_key=self.settings.queue_name(tier))
