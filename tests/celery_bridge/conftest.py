"""A real Celery 5 worker process and a real relay, shared by the tests of a module (starting a Celery
worker costs seconds on a loaded box). Each module gets its own database (cloned from the migrated
template) and its own queue names; tests tell their jobs apart by job id.

The worker runs ``-P solo --without-gossip --without-mingle --without-heartbeat`` unless a module asks
for another pool (``open_bridge(pool="prefork", concurrency=2)``): one process, no cluster chatter
(nothing here uses remote control), which only shortens start-up. A test may start more workers on
queues of their own (``Bridge.start_worker(label=...)``), e.g. one without ``tierbox.celery`` or one
whose ledger sits behind a :class:`TcpGate` the test shuts and opens.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import psycopg
import pytest

import outbox
from outbox.config import Settings
from outbox.registry import Registry
from tests.celery_bridge.celery_app import EFFECTS_DDL
from tests.conftest import _clone, _drop, _with_db
from tests.helpers import ROOT, Proc, delete_broker_objects, free_port, settings_env, wait_until


class CeleryWorker:
    """``celery -A tests.celery_bridge.celery_app worker`` on one queue, its output in a log file.

    ``pool``/``concurrency`` are Celery's ``-P``/``-c``; ``env`` overrides the app's environment
    (``TB_CELERY_INSTALL=0``: no ``tierbox.celery``; ``TB_LEDGER_URL``: the ledger elsewhere than the
    effects table)."""

    def __init__(self, settings: Settings, queue: str, log_path: Path, *, pool: str = "solo",
                 concurrency: int | None = None, env: dict[str, str] | None = None) -> None:
        environ = settings_env(settings)
        environ.update(TB_CELERY_QUEUE=queue, TB_CELERY_BROKER=settings.amqp_url, PYTHONPATH=str(ROOT),
                       TB_LEASE_MARGIN_S="1", TB_REAP_EVERY_S="1")
        environ.update(env or {})
        self.queue = queue
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.celery_bridge.celery_app", "worker", "-P", pool,
             *(["-c", str(concurrency)] if concurrency else []),
             "-Q", queue, "-n", f"tbtest-{queue}@%h", "-l", "INFO",
             "--without-gossip", "--without-mingle", "--without-heartbeat"],
            env=environ, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        if not self._log.closed:  # a stopped worker's log is still read for a failure's report
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


class TcpGate:
    """A TCP hop in front of Postgres that a test shuts and opens: the ledger's database going away
    and coming back, without touching the shared server.

    Shut, nothing listens on its port (connection refused, as for a database that is down) and the
    connections it carried are cut; open, each connection is piped to the real Postgres."""

    def __init__(self, target_url: str) -> None:
        parts = urlsplit(target_url)
        self._target = (parts.hostname or "127.0.0.1", parts.port or 5432)
        self.port = free_port()
        self.url = urlunsplit(parts._replace(netloc=f"{parts.username or ''}"
                                                     f"{':' + parts.password if parts.password else ''}"
                                                     f"@127.0.0.1:{self.port}"))
        self._server: socket.socket | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()

    def open(self) -> None:
        """Listen and pipe each accepted connection to Postgres."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        server.settimeout(0.1)  # the accept loop notices shut() within 0.1 s
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def shut(self) -> None:
        """Stop listening and cut every piped connection."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def _accept(self, server: socket.socket) -> None:
        while self._server is server:
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            upstream = socket.create_connection(self._target)
            with self._lock:
                self._sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(src, dst), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)


class Bridge:
    """The module's database, queue, Celery worker and relay, and readers of the ledger and effects."""

    def __init__(self, settings: Settings, tmp: Path, *, pool: str = "solo", concurrency: int | None = None) -> None:
        self.settings = settings
        self.tmp = tmp
        self.queue = f"{settings.queue_prefix}celery"
        self.pool = pool
        self.concurrency = concurrency
        self.registry = Registry()
        self.procs: list[Proc] = []
        self.worker: CeleryWorker | None = None
        self.extra_workers: list[CeleryWorker] = []
        self.relay: Proc | None = None
        self.tasks = {name: outbox.celery_task(name, tier="normal", queue=self.queue, max_retries=retries,
                                               registry_=self.registry)
                      for name, retries in (("tbtest.effect", 3), ("tbtest.flaky", 2), ("tbtest.retry_twice", 5),
                                                ("tbtest.refuse", 3))}
        # time_limit 1 s: with the 1 s lease margin, a killed run's lease expires 2 s after it started.
        self.tasks["tbtest.sleepy"] = outbox.celery_task("tbtest.sleepy", tier="normal", queue=self.queue,
                                                         time_limit=1, registry_=self.registry)

    def start_worker(self, label: str | None = None, env: dict[str, str] | None = None) -> CeleryWorker:
        """The module's worker (on ``self.queue``, replacing ``self.worker``), or with ``label`` one
        more on a queue of its own, ``<prefix>celery-<label>``, stopped with the bridge."""
        queue = self.queue if label is None else f"{self.queue}-{label}"
        worker = CeleryWorker(self.settings, queue, self.tmp / f"celery-{label or 'main'}-{uuid.uuid4().hex[:4]}.log",
                              pool=self.pool, concurrency=self.concurrency, env=env)
        if label is None:
            self.worker = worker
        else:
            self.extra_workers.append(worker)
        wait_until(lambda: " ready." in worker.output() or worker.popen.poll() is not None,
                   timeout=60, what="celery worker ready")
        assert worker.popen.poll() is None, worker.output()[-3000:]
        return worker

    def declare(self, name: str, queue: str, **options: Any) -> outbox.Task:
        """``name`` declared for another queue (a registry of its own: a name is declared once per registry)."""
        return outbox.celery_task(name, tier="normal", queue=queue, registry_=Registry(), **options)

    def start_relay(self, env: dict[str, str] | None = None) -> Proc:
        proc = Proc(["relay"], self.settings, self.tmp / f"relay{len(self.procs)}.log", env)
        self.procs.append(proc)
        wait_until(lambda: "relay.connected" in proc.output() or not proc.alive(), timeout=30, what="relay connected")
        return proc

    def enqueue(self, task: str | outbox.Task, *args: Any, **options: Any) -> uuid.UUID:
        """Enqueue (committed) a task of the module's queue by name, or a task :meth:`declare` returned."""
        with psycopg.connect(self.settings.database_url) as conn:
            return outbox.enqueue(conn, self.tasks[task] if isinstance(task, str) else task, args=list(args),
                                  **options)

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
        for worker in ([self.worker] if self.worker is not None else []) + self.extra_workers:
            parts.append(f"--- celery worker {worker.queue}\n{worker.output()}")
        return "\n".join(parts)

    def queues(self) -> list[str]:
        """Every Celery queue a worker of this bridge consumed (the cleanup deletes them)."""
        return [self.queue] + [w.queue for w in self.extra_workers]

    def close(self) -> None:
        for p in self.procs:
            p.stop()
        for worker in ([self.worker] if self.worker is not None else []) + self.extra_workers:
            worker.stop()


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


@contextlib.contextmanager
def open_bridge(service_urls: dict[str, str], template_db: str, tmp_path_factory: pytest.TempPathFactory, *,
                pool: str = "solo", concurrency: int | None = None) -> Iterator[Bridge]:
    """A database, a Celery worker (``-P pool -c concurrency``) and a relay; all removed after."""
    admin = service_urls["postgres"]
    name = _clone(admin, template_db)
    settings = Settings(
        database_url=_with_db(admin, name), amqp_url=service_urls["rabbitmq"], redis_url=service_urls["redis"],
        queue_prefix=f"t{uuid.uuid4().hex[:8]}.", relay_poll_interval_s=0.2, relay_retry_delay_s=0.2,
        lease_s=2.0, reaper_interval_s=0.5, app="sample_tasks",
    )
    with psycopg.connect(settings.database_url, autocommit=True) as conn:
        conn.execute(EFFECTS_DDL)
    b = Bridge(settings, tmp_path_factory.mktemp("celery_bridge"), pool=pool, concurrency=concurrency)
    try:
        b.start_worker()
        b.relay = b.start_relay()
        yield b
    finally:
        b.close()
        for queue in b.queues():
            delete_celery_objects(settings, queue)
        delete_broker_objects(settings, "cleanup celery_bridge")
        _drop(admin, name)


@pytest.fixture(scope="module")
def bridge(service_urls: dict[str, str], template_db: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bridge]:
    """A database, a Celery worker (``-P solo``) and a relay for the module's tests."""
    with open_bridge(service_urls, template_db, tmp_path_factory) as b:
        yield b
