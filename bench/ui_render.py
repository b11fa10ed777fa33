"""Render times of the dashboard's screens on a ledger of 2 M jobs, against the same screens on a ledger
of 20 thousand, measured in the same run.

``python -m bench.ui_render [--jobs N] [--quick] [--repeat R]``: builds two migrated databases of its
own, each with the default topology declared under a fresh queue prefix, 300 jobs dead-lettered through
the ledger's own failure path (``outbox.testing.drain`` with a failing handler: real failure groups) and
20,000 finished jobs with their attempts and idempotency keys added by ``INSERT ... SELECT generate_series``
over 30 days, 20 tasks and every tier (so every search already fills its page of 50 and both render the
same amount), with UUIDv7 ids of their enqueue time in the day partitions made for them first.
The big one gets N more such jobs (default 2,000,000; ``--quick`` 200,000). Both are vacuumed and
analysed; then every screen is timed ``R`` times on each, interleaved (Litestar's test client in
process, a logged-in ``read`` session, Postgres and RabbitMQ real). It prints median and p95
milliseconds per screen and the ratio big/small: a screen whose reads are bounded keeps its time
whatever the history holds.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
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
from outbox import Tier, _partitions
from outbox.config import Settings
from tierbox import migrations
from tierbox.api.app import create_app
from tierbox.api.auth import ApiToken, hash_token
from tierbox.api.config import ApiConfig

SECRET = "bench-ui-render-secret"
DEAD = 300
#: Finished jobs of the small ledger (the baseline).
SMALL = 20_000
#: A UUIDv7 (RFC 9562) of the job's enqueue time ``t``: outbox.uuid7()'s expression with ``t`` for the
#: clock, so each history row lands in the day partition of its enqueue day as a real job's id does.
UUID7_OF_T = ("encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING "
              "substring(int8send(floor(extract(epoch FROM t) * 1000)::bigint) FROM 3) FROM 1 FOR 6), 52, 1), 53, 1), "
              "'hex')::uuid")
#: Days of history FILL spreads its jobs over (each gets its day partitions before the fill).
HISTORY_DAYS = 30
# Finished jobs with their attempt and, as enqueue writes it since revision 0017, their idempotency key
# in outbox.idempotency_keys (what the search by key probes): "job by idempotency key" times a hit.
FILL = """
WITH j AS (
    INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries, status, attempts, enqueued_at,
                             published_at, started_at, finished_at, idempotency_key)
    SELECT """ + UUID7_OF_T + """, 'bench.task_' || (g %% 20),
           (ARRAY['critical', 'high', 'normal', 'low', 'bulk', 'calls'])[1 + g %% 6],
           5, '{"args": [1], "kwargs": {}}', 3, 'succeeded', 1, t, t, t, t + interval '20 milliseconds',
           'bench-' || (%(offset)s + g)
    FROM generate_series(1, %(n)s) AS g,
         LATERAL (SELECT now() - (g * interval '""" + str(HISTORY_DAYS) + """ days' / %(n)s)) AS at(t)
    RETURNING id, enqueued_at, finished_at, idempotency_key
), keys AS (
    INSERT INTO outbox.idempotency_keys (key, job_id, created_at)
    SELECT idempotency_key, id, enqueued_at FROM j
)
INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome)
SELECT id, 1, 'bench-history', finished_at, finished_at, 'succeeded' FROM j
"""


@outbox.task(tier=Tier.NORMAL, name="bench.ui_fails", max_retries=0)
def fails(order_id: int) -> None:
    """Fail the way a provider outage does (a failure group of its own)."""
    raise ConnectionError(f"upstream 503 while charging order {order_id}")


#: A key every ledger holds (the small one has keys bench-1 to bench-20000): the search redirects to its job.
KEY_SEARCH = "/ui/jobs?q=bench-12345"


def screens(client: TestClient[Any], url: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        job = conn.execute("SELECT job_id FROM outbox.dead_letters ORDER BY id LIMIT 1").fetchone()[0]  # type: ignore[index]
        fingerprint = conn.execute("SELECT fingerprint FROM outbox.failure_groups LIMIT 1").fetchone()[0]  # type: ignore[index]
    two_hours_ago = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(time.time() - 7200))
    return {"tiers": "/ui/tiers", "tiers (partial)": "/ui/tiers/partial", "dead letters": "/ui/dlq",
            "failure group": f"/ui/dlq/groups/{fingerprint}", "dead letter": f"/ui/dlq/{job}",
            "jobs (last 24 h)": "/ui/jobs", "jobs (task+status)": "/ui/jobs?task=bench.task_7&status=succeeded",
            "jobs (tier, 2 h window)": f"/ui/jobs?tier=high&since={two_hours_ago}",
            "job by idempotency key": KEY_SEARCH, "job page": f"/ui/jobs/{job}",
            "control": "/ui/control"}


def time_one(client: TestClient[Any], path: str) -> float:
    """Milliseconds of one GET of ``path`` (following a redirect, as the browser does)."""
    started = time.perf_counter()
    r = client.get(path, follow_redirects=True)
    elapsed = (time.perf_counter() - started) * 1000
    if r.status_code != 200:
        raise SystemExit(f"{path}: {r.status_code} {r.text[:300]}")
    if path.startswith(KEY_SEARCH) and not r.url.path.startswith("/ui/jobs/"):
        raise SystemExit(f"{path} found no job: the key screen would time a miss, not a hit")
    return elapsed


def ledger(base: Settings, extra: int) -> tuple[Settings, str, int]:
    """A database of its own: DEAD dead letters, SMALL finished jobs, then ``extra`` more; vacuumed and
    analysed. Returns its settings (own queue prefix, topology declared), its name and its job count."""
    name = f"bench_ui_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.database_url.rsplit("/", 1)[0] + f"/{name}"
    settings = Settings(database_url=url, amqp_url=base.amqp_url, redis_url=base.redis_url,
                        queue_prefix=f"b{uuid.uuid4().hex[:6]}.")
    migrations.upgrade(url)
    with psycopg.connect(settings.psycopg_url) as conn:
        # The history's day partitions, made before any job is written (the default stays empty: no scan).
        today = dt.datetime.now(dt.UTC).date()
        for back in range(HISTORY_DAYS + 1):
            _partitions.create_day(conn, today - dt.timedelta(days=back))
        conn.commit()
    asyncio.run(declare(settings))
    with psycopg.connect(settings.psycopg_url) as conn:
        ids = [outbox.enqueue(conn, "bench.ui_fails", args=[i]) for i in range(DEAD)]
        outbox.testing.drain(conn, jobs=ids, max_jobs=DEAD)
        conn.commit()
    with psycopg.connect(settings.psycopg_url, autocommit=True) as conn:
        conn.execute(FILL, {"n": SMALL, "offset": 0})
        if extra:
            conn.execute(FILL, {"n": extra, "offset": SMALL})
        conn.execute("VACUUM ANALYZE")  # both ledgers measured settled, not mid-autovacuum
        conn.execute("CHECKPOINT")
        total = int(conn.execute("SELECT count(*) FROM outbox.jobs").fetchone()[0])  # type: ignore[index]
        stray = int(conn.execute("SELECT count(*) FROM outbox.jobs_default").fetchone()[0])  # type: ignore[index]
    if stray:  # reported, not fatal: the run still measures, and main() drops this database
        print(f"warning: {name}: {stray:,} rows in outbox.jobs_default instead of their day partition")
    return settings, name, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=2_000_000)
    parser.add_argument("--quick", action="store_true", help="200,000 jobs")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()
    logging.getLogger("httpx").setLevel(logging.WARNING)
    n = 200_000 if args.quick else args.jobs
    base = Settings.from_env()
    made: list[tuple[Settings, str]] = []
    try:
        small_settings, small_name, small_total = ledger(base, 0)
        made.append((small_settings, small_name))
        started = time.monotonic()
        big_settings, big_name, big_total = ledger(base, n)
        made.append((big_settings, big_name))
        fill_s = time.monotonic() - started
        config = ApiConfig(tokens=(ApiToken("bench", "read", hash_token(SECRET)),))
        with TestClient(create_app(small_settings, config)) as small, \
                TestClient(create_app(big_settings, config)) as big:
            sides = {"small": (small, screens(small, small_settings.database_url)),
                     "big": (big, screens(big, big_settings.database_url))}
            for client, _ in sides.values():
                client.post("/ui/login", data={"token": SECRET})
            times: dict[tuple[str, str], list[float]] = {}
            # Interleaved, screen by screen and round by round, so drift on a shared machine hits both alike.
            for _ in range(args.repeat):
                for label in sides["small"][1]:
                    for side, (client, pages) in sides.items():
                        times.setdefault((side, label), []).append(time_one(client, pages[label]))
                    if label.startswith("tiers"):
                        time.sleep(1.05)  # past the shared snapshot's second: each tiers read is a real one
    finally:
        for settings, name in made:
            asyncio.run(declare(settings, delete=True))
            with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stats(values: list[float]) -> tuple[float, float]:
        return median(values), quantiles(values, n=20)[18] if len(values) >= 2 else values[0]

    print(f"Dashboard render times, {args.repeat} requests each, interleaved (in-process, a logged-in read session)")
    print(f"  small ledger: {small_total:,} jobs ({DEAD} dead); big: {big_total:,} jobs (built in {fill_s:.0f} s)")
    print(f"  {'screen':26} {'small median':>12} {'p95':>8}   {'big median':>12} {'p95':>8}   ratio")
    for label in sides["small"][1]:
        (sm, sp), (bm, bp) = stats(times[("small", label)]), stats(times[("big", label)])
        print(f"  {label:26} {sm:10.1f}ms {sp:6.1f}ms   {bm:10.1f}ms {bp:6.1f}ms   {bm / sm:5.2f}x")


if __name__ == "__main__":
    main()
