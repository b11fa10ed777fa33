"""A chaos producer process: enqueues jobs inside business transactions, some rolled back on purpose.

Usage: python -m tests.chaos.producer COUNT SEED ROLLBACK_SHARE SECONDS (paced to spread COUNT over SECONDS)
Committed jobs are recorded in ``chaos_orders`` in the same transaction as the enqueue (so the table is
the truth of what committed); rolled-back job ids go to ``chaos_rolled_back`` on a separate connection.
"""

from __future__ import annotations

import os
import random
import sys
import time

import psycopg

import outbox
from tests.chaos import tasks

#: Handler sleep choices (ms); CHAOS_NOOP=1 makes every job a no-op (the load-held profile).
WORK_MS = [0] if os.environ.get("CHAOS_NOOP") == "1" else [0, 0, 0, 20, 200]
TIER_MIX = [("critical", 1), ("high", 2), ("normal", 3), ("low", 2), ("bulk", 3), ("calls", 1)]


def main(count: int, seed: int, rollback_share: float, seconds: float) -> None:
    rng = random.Random(seed)
    tiers = [t for t, w in TIER_MIX for _ in range(w)]
    url = os.environ["TIERBOX_DATABASE_URL"]
    done = 0
    began = time.monotonic()
    while done < count:
        try:
            with psycopg.connect(url) as conn, psycopg.connect(url, autocommit=True) as side:
                while done < count:
                    batch = min(rng.randint(1, 20), count - done)
                    _transaction(conn, side, rng, tiers, batch, rollback_share)
                    done += batch
                    ahead_s = began + seconds * done / count - time.monotonic()
                    if ahead_s > 0:
                        time.sleep(ahead_s)
        except psycopg.OperationalError:
            time.sleep(0.2)  # our backend was terminated by the chaos: reconnect; the open tx rolled back


def _transaction(conn: psycopg.Connection, side: psycopg.Connection, rng: random.Random, tiers: list[str],
                 batch: int, rollback_share: float) -> None:
    ids = []
    with conn.transaction() as tx:
        for _ in range(batch):
            tier = rng.choice(tiers)
            job_id = outbox.enqueue(conn, tasks.EFFECTS[tier], kwargs={"work_ms": rng.choice(WORK_MS)})
            conn.execute("INSERT INTO public.chaos_orders (job_id, tier) VALUES (%s, %s)", (job_id, tier))
            ids.append(job_id)
        if rng.random() < rollback_share:
            for job_id in ids:
                side.execute("INSERT INTO public.chaos_rolled_back (job_id) VALUES (%s)", (job_id,))
            raise psycopg.Rollback(tx)  # the business transaction fails: none of these jobs may ever run


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]))
