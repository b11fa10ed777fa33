"""``GET /admin/tiers`` under many readers: one tier-health read per request (before) against the shared
snapshot (after), measured in the same run with wrk and 16 connections.

``python -m bench.admin_load [--seconds S] [--connections C]``: makes a migrated database of its own and
declares the default topology under a fresh queue prefix, starts one ``tierbox api`` app in uvicorn with
an extra route, ``/bench/tiers-per-request``, that answers exactly as ``/admin/tiers`` did before the
snapshot (``ops.tier_health.health`` on the request's connection: a ``tier_health`` query and a passive
declare per queue on RabbitMQ for every request), then runs wrk against that route, ``/admin/tiers`` and,
as a reference, ``/admin/dlq``. It prints requests/s and p99 of each, the ratio after/before, and how many
tier-health reads each path made (what the broker and Postgres paid). Needs ``wrk`` (apt-get install wrk).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import aio_pika
import psycopg
from litestar import get
from litestar.datastructures import State

from outbox._amqp import declare_topology
from outbox.config import Settings
from tierbox import migrations
from tierbox.api import params
from tierbox.api.app import create_app
from tierbox.api.auth import hash_token
from tierbox.api.config import ApiConfig
from tierbox.api.guards import require
from tierbox.ops import tier_health
from tierbox.ops.models import TierHealth

SECRET = "bench-admin-load-secret"
#: Tier-health reads made by the per-request route (the snapshot counts its own).
PER_REQUEST_READS = {"n": 0}


@get("/bench/tiers-per-request", guards=[require("read")], include_in_schema=False)
async def tiers_per_request(db: params.Db, state: State) -> list[TierHealth]:
    """``/admin/tiers`` as it was before the shared snapshot: read anew on every request."""
    PER_REQUEST_READS["n"] += 1
    return await tier_health.health(db, state.settings, state.broker)


@get("/bench/reads", include_in_schema=False)
async def reads(state: State) -> dict[str, int]:
    """How many tier-health reads each path made so far."""
    return {"per_request": PER_REQUEST_READS["n"], "snapshot": state.snapshot.refreshes}


def app_factory() -> Any:
    """The admin API of the environment's settings, plus the two bench routes (uvicorn ``--factory``)."""
    app = create_app(Settings.from_env(), ApiConfig.from_env())
    app.register(tiers_per_request)
    app.register(reads)
    return app


async def declare(settings: Settings, delete: bool = False) -> None:
    """Declare the topology of ``settings`` (so passive declares find their queues), or delete it."""
    conn = await aio_pika.connect(settings.amqp_url)
    async with conn:
        if not delete:
            await declare_topology(conn, settings)
            return
        for tier in settings.topology.tiers:
            for queue in (settings.queue_name(tier), settings.dlq_name(tier)):
                ch = await conn.channel()
                await ch.queue_delete(queue)
        ch = await conn.channel()
        await ch.exchange_delete(settings.exchange_name)
        await ch.exchange_delete(settings.dlx_name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wrk(url: str, seconds: int, connections: int) -> tuple[float, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          "-H", f"Authorization: Bearer {SECRET}", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)\b", out)
    assert p99 is not None, out
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        raise SystemExit(f"{url}: {non2xx.group(1)} error responses\n{out}")
    return rps, float(p99.group(1)) * scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("bench.admin_load needs wrk: apt-get install wrk")
    base = Settings.from_env()
    name = f"bench_admin_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.database_url.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings(database_url=url, amqp_url=base.amqp_url, redis_url=base.redis_url,
                        queue_prefix=f"b{uuid.uuid4().hex[:6]}.")
    migrations.upgrade(url)

    asyncio.run(declare(settings))
    port = _free_port()
    env = {**os.environ, "TIERBOX_DATABASE_URL": url, "TIERBOX_QUEUE_PREFIX": settings.queue_prefix,
           "TIERBOX_API_TOKENS": f"bench:read:{hash_token(SECRET)}"}
    server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "bench.admin_load:app_factory",
                               "--port", str(port), "--log-level", "warning"], env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{root}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.2)
        rows = []
        for label, path in (("before: read per request", "/bench/tiers-per-request"),
                            ("after: shared snapshot", "/admin/tiers"), ("reference: /admin/dlq", "/admin/dlq")):
            _wrk(root + path, 2, args.connections)  # warm up
            rows.append((label, *_wrk(root + path, args.seconds, args.connections)))
        counts = urllib.request.urlopen(f"{root}/bench/reads", timeout=5).read().decode()
    finally:
        server.terminate()
        server.wait(10)
        asyncio.run(declare(settings, delete=True))
        with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"GET /admin/tiers, wrk -t2 -c{args.connections} -d{args.seconds}s, one uvicorn worker")
    for label, rps, p99 in rows:
        print(f"  {label:28} {rps:8.1f} req/s   p99 {p99:8.1f} ms")
    print(f"  after/before: {rows[1][1] / rows[0][1]:.1f}x requests/s, p99 {rows[1][2] / rows[0][2]:.2f}x")
    print(f"  tier-health reads (tier_health query + a passive declare per queue): {counts}")


if __name__ == "__main__":
    main()
