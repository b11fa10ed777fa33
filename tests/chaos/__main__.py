"""``make chaos`` / ``python -m tests.chaos``: a chaos run outside pytest (the long profile by default).

    python -m tests.chaos --jobs 1000000 --minutes 30 [--seed N] [--restarts [--exclude KIND]...] [--keep-db]

Creates its own database and queue prefix on the services named by TIERBOX_* env URLs, prints the
checker's table, and exits 1 if anything was lost, doubled, stranded or run after a rollback.
With ``--restarts`` the run starts a RabbitMQ node of its own (``scripts/rabbitmq-node``, needs root)
and uses it instead of TIERBOX_AMQP_URL, so ``restart_rabbitmq`` and ``reset_broker`` never touch the
shared broker; ``restart_postgres`` does restart the shared Postgres (``--exclude restart_postgres``).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg

from outbox.config import Settings
from tests.chaos.harness import BASE_FAULTS, RESTART_FAULTS, ChaosRun
from tests.chaos.node import BrokerNode
from tests.helpers import delete_broker_objects
from tierbox import migrations


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--minutes", type=float, default=30.0, help="production spread over this long")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--restarts", action="store_true",
                        help="also restart and reset RabbitMQ (a node of the run's own) and restart Postgres")
    parser.add_argument("--exclude", action="append", default=[], choices=BASE_FAULTS + RESTART_FAULTS,
                        metavar="KIND", help="leave this fault kind out (repeatable)")
    parser.add_argument("--keep-db", action="store_true", help="keep the database for inspection")
    parser.add_argument("--load-held", action="store_true",
                        help="no faults, no-op jobs at a steady rate over a BULK backlog: report waits and RSS")
    parser.add_argument("--bulk-backlog", type=int, default=0, help="BULK jobs committed before the run")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    base = Settings.from_env()
    name = f"tierbox_chaos_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(urlsplit(base.database_url)._replace(path=f"/{name}"))
    migrations.upgrade(url)
    settings = Settings.from_env(database_url=url, queue_prefix=f"chaos{uuid.uuid4().hex[:6]}.", lease_s=5.0,
                                 reaper_interval_s=1.0, relay_poll_interval_s=0.5, shutdown_grace_s=5.0)
    workdir = Path(tempfile.mkdtemp(prefix="tierbox-chaos-"))
    node = BrokerNode() if args.restarts else None
    print(f"chaos seed {seed}; database {name}; logs in {workdir}", flush=True)
    produce_s = args.minutes * 60
    try:
        if node:
            node.start()
            print(f"private RabbitMQ node {node.name}@localhost on 127.0.0.1:{node.port}, vhost {node.vhost}",
                  flush=True)
        if args.load_held:
            os.environ["CHAOS_NOOP"] = "1"
        report = ChaosRun(settings, workdir, seed=seed, jobs=args.jobs, restarts=args.restarts,
                          fault_gap_s=(2.0, 6.0), produce_s=produce_s, timeout_s=produce_s + 300,
                          faults=not args.load_held, bulk_backlog=args.bulk_backlog, node=node,
                          exclude=tuple(args.exclude)).run()
    finally:
        if node:
            node.stop()  # its queues and data go with it
        else:
            delete_broker_objects(settings)
        if not args.keep_db:
            with psycopg.connect(base.psycopg_url, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    print(report.table())
    return 0 if report.ok else 1


if __name__ == "__main__":
    os.environ.setdefault("TIERBOX_LOG_LEVEL", "INFO")
    sys.exit(main())
