"""``python -m examples.demo`` (``make demo``): run the relay and the four pools, enqueue sample jobs, print the ledger.

Run ``tierbox migrate`` first; settings come from the ``TIERBOX_*`` variables.
"""

import sys

import psycopg

from examples.demo.demo import run
from outbox.config import Settings

settings = Settings.from_env()
with psycopg.connect(settings.psycopg_url, connect_timeout=5):
    pass  # fail here, with psycopg's one line, when Postgres is not reachable
sys.exit(run(settings))
