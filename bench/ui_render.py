"""Render times of the dashboard's screens on a ledger of 2 M jobs, against the same screens on a ledger
of a few hundred, measured in the same run.

``python -m bench.ui_render [--jobs N] [--quick] [--repeat R]``: makes a migrated database of its own
and declares the default topology under a fresh queue prefix. It dead-letters 300 jobs through the
ledger's own failure path (``outbox.testing.drain`` with a failing handler: real failure groups), times
every screen ``R`` times in-process (Litestar's test client, a logged-in ``read`` session, Postgres and
RabbitMQ real), then adds N finished jobs with their attempts (default 2,000,000; ``--quick``
200,000) by ``INSERT ... SELECT generate_series`` spread over 30 days, 20 tasks and every tier, runs
ANALYZE, and times the screens again. It prints median and p95 milliseconds per screen and the ratio
big/small: a screen whose reads are bounded keeps its time whatever the history holds.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import time
import uuid
from statistics import median, quantiles
from typing import Any

import psycopg
from litestar.testing import TestClient

import outbox
import outbox.testing
from bench.admin_load import declare
from outbox import Tier
from outbox.config import Settings
from tierbox import migrations
from tierbox.api.app import create_app
from tierbox.api.auth import ApiToken, hash_token
from tierbox.api.config import ApiConfig

SECRET = "bench-ui-render-secret"
DEAD = 300
FILL = """
WITH j AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries, status, attempts, enqueued_at,
                             published_at, started_at, finished_at, idempotency_key)
    SELECT gen_random_uuid(), 'bench.task_' || (g %% 20),
           (ARRAY['critical', 'high', 'normal', 'low', 'bulk', 'calls'])[1 + g %% 6],
           5, '{"args": [1], "kwargs": {}}', 3, 'succeeded', 1, t, t, t, t + interval '20 milliseconds',
           'bench-' || g
    FROM generate_series(1, %(n)s) AS g, LATERAL (SELECT now() - (g * interval '30 days' / %(n)s)) AS at(t)
    RETURNING id, finished_at
)
INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
SELECT id, 1, 'bench-history', finished_at, finished_at, 'succeeded' FROM j
"""


@outbox.task(tier=Tier.NORMAL, name="bench.ui_fails", max_retries=0)
def fails(order_id: int) -> None:
    """Fail the way a provider outage does (a failure group of its own)."""
    raise ConnectionError(f"upstream 503 while charging order {order_id}")


def screens(client: TestClient[Any], url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        job = conn.execute("SELECT job_id FROM outbox.dead_letters ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        fingerprint = conn.execute("SELECT fingerprint FROM outbox.failure_groups LIMIT 1").fetchone()[0]  # type: ignore[index]
    two_hours_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 7200))
    return {"tiers": "/ui/tiers", "tiers (partial)": "/ui/tiers/partial", "dead letters": "/ui/dlq",
            "failure group": f"/ui/dlq/groups/{fingerprint}", "dead letter": f"/ui/dlq/{job}",
            "jobs (last 24 h)": "/ui/jobs", "jobs (task+status)": "/ui/jobs?task=bench.task_7&status=succeeded",
            "jobs (tier, 2 h window)": f"/ui/jobs?tier=high&since={two_hours_ago}",
            "job by idempotency key": "/ui/jobs?q=bench-12345", "job page": f"/ui/jobs/{job}",
            "control": "/ui/control"}


def measure(client: TestClient[Any], pages: dict[str, str], repeat: int) -> dict[str, tuple[float, float]]:
    out = {}
    for label, path in pages.items():
        times = []
        for _ in range(repeat):
            started = time.perf_counter()
            r = client.get(path, follow_redirects=True)
            times.append((time.perf_counter() - started) * 1000)
            if r.status_code != 200:
                raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
            time.sleep(1.05 if label.startswith("tiers") else 0)  # each tiers read past the shared snapshot's second
        out[label] = (median(times), quantiles(times, n=20)[18] if len(times) >= 2 else times[0])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 jobs")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    n = 200_000 if args.quick else args.jobs
    base = Settings.from_env()
    name = f"bench_ui_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.database_url.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings(database_url=url, amqp_url=base.amqp_url, redis_url=base.redis_url,
                        queue_prefix=f"b{uuid.uuid4().hex[:6]}.")
    try:
        migrations.upgrade(url)
        asyncio.run(declare(settings))
        with psycopg.connect(settings.psycopg_url) as conn:
            ids = [outbox.enqueue(conn, "bench.ui_fails", args=[i]) for i in range(DEAD)]
            outbox.testing.drain(conn, jobs=ids, max_jobs=DEAD)
            conn.commit()
        config = ApiConfig(tokens=(ApiToken("bench", "read", hash_token(SECRET)),))
        with TestClient(create_app(settings, config)) as client:
            client.post("/ui/login", data={"token": SECRET})
            pages = screens(client, url)
            small = measure(client, pages, args.repeat)
            started = time.monotonic()
            with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
                conn.execute(FILL, {"n": n})
                conn.execute("ANALYZE")
                total = conn.execute("SELECT count(*) FROM outbox.jobs").fetchone()[0]  # type: ignore[index]
            fill_s = time.monotonic() - started
            big = measure(client, pages, args.repeat)
    finally:
        asyncio.run(declare(settings, delete=True))
        with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(f"Dashboard render times, {args.repeat} requests each (in-process, one logged-in read session)")
    print(f"  ledger: {DEAD} dead jobs, then {total:,} jobs after adding {n:,} in {fill_s:.0f} s")
    print(f"  {'screen':26} {'small median':>12} {'p95':>8}   {'big median':>16} {'p95':>8}   ratio")
    for label in pages:
        (sm, sp), (bm, bp) = small[label], big[label]
        print(f"  {label:26} {sm:10.1f}ms {sp:6.1f}ms   {bm:14.1f}ms {bp:6.1f}ms   {bm / sm:5.2f}x")


if __name__ == "__main__":
    main()
