"""Fixtures against the real services (Postgres, RabbitMQ, Redis) named by the env URLs.

Two kinds of database fixture:

* ``tx``: a connection in a transaction that is rolled back, on a shared
  migrated database (enqueue and query tests);
* ``db_url``: a fresh database cloned from a migrated template, committed and
  dropped afterwards (relay and worker tests that use several connections).

RabbitMQ isolation: every test gets a unique queue/exchange prefix, and the
fixture deletes what it declared. That isolation is what lets ``make test`` run the suite in two
pytest-xdist workers; tests on RabbitMQ nodes of the session's own (a private node, a cluster) are
kept on one worker each (:func:`pytest_collection_modifyitems`), so no node is started twice. Where a service is unreachable and a Docker
engine exists, testcontainers starts it; otherwise the session stops with one
line saying how to start it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aio_pika
import psycopg
import pytest
import redis

from outbox.config import DEFAULT_AMQP_URL, DEFAULT_DATABASE_URL, DEFAULT_REDIS_URL, Settings
from tests.helpers import Proc, delete_broker_objects
from tests.system import System
from tierbox import migrations

START_HINTS = {
    "postgres": "pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start",
    "rabbitmq": "rabbitmq-server -detached",
    "redis": "redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save '' --appendonly no",
}


def _with_db(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


def _start_container(kind: str) -> str | None:
    if not shutil.which("docker") or not os.path.exists("/var/run/docker.sock"):
        return None
    try:
        if kind == "postgres":
            from testcontainers.postgres import PostgresContainer

            c = PostgresContainer("postgres:16", driver=None).start()
            return str(c.get_connection_url())
        if kind == "rabbitmq":
            from testcontainers.rabbitmq import RabbitMqContainer

            r = RabbitMqContainer("rabbitmq:3.13").start()
            return f"amqp://guest:guest@{r.get_container_host_ip()}:{r.get_exposed_port(5672)}/"
        if kind == "redis":
            from testcontainers.redis import RedisContainer

            d = RedisContainer().start()
            return f"redis://{d.get_container_host_ip()}:{d.get_exposed_port(6379)}/0"
    except Exception:  # noqa: BLE001 - fall through to the one-line failure
        return None
    return None


def _reachable(kind: str, url: str) -> str | None:
    try:
        if kind == "postgres":
            psycopg.connect(url, connect_timeout=3).close()
        elif kind == "rabbitmq":
            async def ping() -> None:
                conn = await aio_pika.connect(url, timeout=3)
                await conn.close()
            asyncio.run(ping())
        else:
            redis.Redis.from_url(url, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001 - reported in one line
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
    return None


@pytest.fixture(scope="session")
def service_urls() -> dict[str, str]:
    urls = {
        "postgres": os.environ.get("TIERBOX_DATABASE_URL") or DEFAULT_DATABASE_URL,
        "rabbitmq": os.environ.get("TIERBOX_AMQP_URL") or DEFAULT_AMQP_URL,
        "redis": os.environ.get("TIERBOX_REDIS_URL") or DEFAULT_REDIS_URL,
    }
    for kind, url in list(urls.items()):
        error = _reachable(kind, url)
        if error is None:
            continue
        started = _start_container(kind)
        if started and _reachable(kind, started) is None:
            urls[kind] = started
            continue
        pytest.exit(f"{kind} unreachable at {url} ({error}); start it with: {START_HINTS[kind]}", returncode=3)
    return urls


@pytest.fixture(scope="session")
def template_db(service_urls: dict[str, str]) -> Iterator[str]:
    """A migrated database that per-test databases are cloned from."""
    admin = service_urls["postgres"]
    name = f"tierbox_tpl_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    migrations.upgrade(_with_db(admin, name))
    yield name
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _clone(admin: str, template: str) -> str:
    name = f"tierbox_t_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    return name


def _drop(admin: str, name: str) -> None:
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def empty_db_url(service_urls: dict[str, str]) -> Iterator[str]:
    """An empty database of this test's own (no outbox schema), dropped afterwards."""
    admin = service_urls["postgres"]
    name = f"tierbox_e_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _with_db(admin, name)
    finally:
        _drop(admin, name)


@pytest.fixture(scope="session")
def shared_db_url(service_urls: dict[str, str], template_db: str) -> Iterator[str]:
    admin = service_urls["postgres"]
    name = _clone(admin, template_db)
    yield _with_db(admin, name)
    _drop(admin, name)


@pytest.fixture
def db_url(service_urls: dict[str, str], template_db: str) -> Iterator[str]:
    """A fresh, committed, migrated database for this test only."""
    admin = service_urls["postgres"]
    name = _clone(admin, template_db)
    yield _with_db(admin, name)
    _drop(admin, name)


@pytest.fixture
def tx(shared_db_url: str) -> Iterator[psycopg.Connection]:
    """A psycopg connection inside a transaction that is rolled back after the test."""
    conn = psycopg.connect(shared_db_url)
    try:
        yield conn
    finally:
        conn.rollback()
        conn.close()


@pytest.fixture
def prefix(request: pytest.FixtureRequest, service_urls: dict[str, str]) -> Iterator[str]:
    """A unique queue/exchange prefix; everything declared under it is deleted afterwards."""
    value = f"t{uuid.uuid4().hex[:8]}."
    yield value

    delete_broker_objects(Settings(amqp_url=service_urls["rabbitmq"], queue_prefix=value),
                          f"cleanup {request.node.name}")


@pytest.fixture
def settings(db_url: str, prefix: str, service_urls: dict[str, str]) -> Settings:
    """Settings for a relay/worker test: own database, own queue names, short timings."""
    return Settings(
        database_url=db_url, amqp_url=service_urls["rabbitmq"], redis_url=service_urls["redis"],
        queue_prefix=prefix, relay_poll_interval_s=0.2, relay_retry_delay_s=0.2, lease_s=2.0,
        reaper_interval_s=0.5, shutdown_grace_s=5.0, app="sample_tasks",
    )


@pytest.fixture
async def amqp(request: pytest.FixtureRequest, settings: Settings) -> AsyncIterator[aio_pika.abc.AbstractConnection]:
    """A RabbitMQ connection named after the test."""
    conn = await aio_pika.connect(settings.amqp_url, client_properties={"connection_name": request.node.nodeid[-200:]})
    yield conn
    await conn.close()


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[list[Proc]]:
    """Collects started processes and kills any still running after the test."""
    started: list[Proc] = []
    yield started
    for p in started:
        p.stop()


@pytest.fixture
def system(settings: Settings, procs: list[Proc], tmp_path: Path) -> Iterator[System]:
    """Relay/worker processes for one test, on its own database and queues."""
    yield System(settings, procs, tmp_path)


#: Session fixtures that start RabbitMQ nodes of their own: the tests using one share an xdist group
#: (``--dist loadgroup``), so one worker starts the node(s) once instead of every worker.
NODE_FIXTURES = ("private_broker", "cluster")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the tests of each node-starting session fixture in one xdist group."""
    for item in items:
        for name in NODE_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break
