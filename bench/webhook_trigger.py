"""The cost of revision 0013's trigger on a success of a job that has no webhook (issue #16).

``python -m bench.webhook_trigger [--url URL] [--jobs N] [--rounds R]``: in a scratch database
migrated to head (created next to ``--url``, default ``TIERBOX_DATABASE_URL``, dropped at the end),
``N`` running jobs per round are succeeded one by one with the ledger's ``SUCCEED`` statement, each
its own transaction, as a worker records them: with the trigger ``enqueue_webhook_delivery``
enabled (as migrated) and disabled (``ALTER TABLE ... DISABLE TRIGGER``: the ledger before 0013),
in ABBA order so drift hits both alike. Prints jobs/s per round, the medians and their ratio.
"""

from __future__ import annotations

import argparse
import os
import time
import uuid
from statistics import median

import psycopg

from outbox import _transitions as transitions
from outbox._sql import run
from tierbox import migrations

INSERT_RUNNING = """
INSERT INTO outbox.jobs (id, task, tier, priority, payload, headers, max_retries, status, attempts, started_at)
SELECT unnest(CAST(%s AS uuid[])), 'bench.noop', 'normal', 5, '{}', '{}', 0, 'running', 1, now()
"""


def main() -> None:
    """Run the comparison and print it."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default=os.environ.get("TIERBOX_DATABASE_URL", "postgresql://postgres@127.0.0.1/test"))
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args()
    base, _, _ = args.url.rpartition("/")
    name = f"bench_webhooks_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"{base}/{name}"
        migrations.upgrade(url)
        rates: dict[str, list[float]] = {"trigger": [], "none": []}
        order = ["trigger", "none", "none", "trigger"] * ((args.rounds + 3) // 4)
        with psycopg.connect(url, autocommit=True) as conn:
            for mode in order[: args.rounds]:
                action = "ENABLE" if mode == "trigger" else "DISABLE"
                conn.execute(f"ALTER TABLE outbox.jobs {action} TRIGGER enqueue_webhook_delivery")
                ids = [uuid.uuid4() for _ in range(args.jobs)]
                conn.execute(INSERT_RUNNING, (ids,))
                began = time.perf_counter()
                for job_id in ids:
                    run(conn, transitions.SUCCEED, {"job_id": job_id, "attempt": 1})
                rates[mode].append(args.jobs / (time.perf_counter() - began))
                print(f"{mode:8} {rates[mode][-1]:8.0f} jobs/s", flush=True)
        on, off = median(rates["trigger"]), median(rates["none"])
        print(f"median: trigger {on:.0f} jobs/s, none {off:.0f} jobs/s, ratio none/trigger {off / on:.3f}")
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
