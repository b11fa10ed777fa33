"""The job history partitioned by day (issue #19, "Retention at scale"): retention drops a partition.

``outbox.jobs`` becomes ``PARTITION BY RANGE (id)``, and ``outbox.attempts`` and ``outbox.job_events``
``PARTITION BY RANGE (job_id)``, with one partition per UTC day whose bounds are the UUIDv7 of that
midnight (48-bit Unix ms, then zeros). New job ids are UUIDv7 (``outbox._ids.new_job_id``,
``outbox.uuid7()``), so a day of jobs, their attempts and their events are three partitions that
``tierbox prune`` detaches and drops as a set once every job in them is finished past retention
(``outbox._partitions``; bench/README.md, "Retention at scale", for the figures).

Nothing is copied: the existing tables are renamed ``jobs_default``, ``attempts_default`` and
``job_events_default`` and attached as the DEFAULT partition of the new partitioned tables (their
primary keys and indexes are attached as the partitions' copies of the parent's, not rebuilt). Pre-0017
jobs have uuid4 ids scattered over the whole key range: they stay in the default partitions and are
pruned by row deletes as before. The day partitions themselves are created after this revision, online,
by ``outbox._partitions.ensure`` (``tierbox migrate``, the workers hourly, ``tierbox partitions``).

Departures from a plain "partition everything":

* ``outbox.attempts`` has no foreign key to ``outbox.jobs`` any more. A foreign key whose referenced
  table is partitioned makes every DETACH of a jobs partition check every referencing partition
  (measured: 0.3 s with three 200 k-row attempts partitions, under the ACCESS EXCLUSIVE lock on
  ``outbox.jobs`` that DETACH takes), and re-adding it at the parent validates the whole table (3.2 s
  for 2 M rows during this migration). Attempts are written only by ``outbox.start_attempt`` next to
  their job row, and deleted with their job (``PRUNE_BATCH`` deletes them as it deletes job_events).
* The unique index on ``jobs.idempotency_key`` cannot stay (a unique index of a partitioned table must
  contain the partition key): uniqueness moves to ``outbox.idempotency_keys`` (key PRIMARY KEY, job_id),
  written in the enqueue statement itself. The existing keys are copied into it (only rows that have a
  key, read through the unique index), which is the one copy this revision makes.
* ``pending``, ``leases`` and ``republished`` lose their foreign keys to ``outbox.jobs`` too. Checking a
  key against a partitioned table costs a lock on every partition and index of it per checked row (a
  cached generic plan): measured, ``enqueue_many`` of 2,000 jobs ran at 15,054 jobs/s with the key on
  ``pending`` and 37,630 without (27,340 before this revision), single ``enqueue()`` calls at 2,703 and
  3,979 jobs/s. And every DETACH of a jobs partition re-checked them under ACCESS EXCLUSIVE locks on the
  three tables. Their rows are written only next to their job row, and every statement that deletes a
  job deletes them with it (``PRUNE_BATCH``, a dropped day). ``webhooks`` and
  ``job_watchers`` stay unpartitioned (one row per job that asked for a webhook, deleted with the job;
  an UNLOGGED table of streams being read).
* The views over these tables are re-created (Postgres binds a view to the table it was created on,
  which is now the default partition), with unchanged definitions; the two triggers on ``outbox.jobs``
  move to the partitioned table (Postgres clones them onto every partition).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-01
"""

import importlib

import sqlalchemy as sa
from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

_0001 = importlib.import_module("tierbox.migrations.versions.0001_outbox_schema")
_0012 = importlib.import_module("tierbox.migrations.versions.0012_job_events")
_0013 = importlib.import_module("tierbox.migrations.versions.0013_webhooks")

UUID7 = r"""
-- A UUIDv7 (RFC 9562) for now: 48-bit Unix milliseconds (clock_timestamp), version 7, variant 10,
-- the rest random (gen_random_uuid's bytes). outbox._ids.new_job_id makes the same in Python.
CREATE FUNCTION outbox.uuid7() RETURNS uuid LANGUAGE sql VOLATILE PARALLEL SAFE AS $$
SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid())
                                      PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint)
                                                        FROM 3)
                                      FROM 1 FOR 6), 52, 1), 53, 1), 'hex')::uuid
$$;
"""

KEYS = """
CREATE TABLE outbox.idempotency_keys (
    key        text        NOT NULL,
    job_id     uuid        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT pk_idempotency_keys PRIMARY KEY (key)
);
COMMENT ON TABLE outbox.idempotency_keys IS 'One row per idempotency key in use: the job it names (uniqueness across every partition of outbox.jobs); pruned with its job.';
CREATE INDEX ix_idempotency_keys_job_id ON outbox.idempotency_keys (job_id);
INSERT INTO outbox.idempotency_keys (key, job_id, created_at)
SELECT idempotency_key, id, enqueued_at FROM outbox.jobs_default WHERE idempotency_key IS NOT NULL;
"""

# (table, partition key, {old index name: name on the default partition}, CREATE statements of the
# partitioned table's indexes, each matching an existing one so ATTACH adopts it instead of building).
TABLES: tuple[tuple[str, str, dict[str, str], list[str], str], ...] = (
    ("jobs", "id",
     {"pk_jobs": "jobs_default_pkey", "ix_jobs_finished_at": "jobs_default_finished_at_idx",
      "ix_jobs_enqueued_at": "jobs_default_enqueued_at_idx", "ix_jobs_unfinished_tier": "jobs_default_tier_idx"},
     ["CREATE INDEX ix_jobs_finished_at ON outbox.jobs (finished_at) WHERE finished_at IS NOT NULL",
      "CREATE INDEX ix_jobs_enqueued_at ON outbox.jobs (enqueued_at)",
      "CREATE INDEX ix_jobs_unfinished_tier ON outbox.jobs (tier) WHERE finished_at IS NULL"],
     "One row per job: the ledger and audit record; partitioned by day of its UUIDv7 id."),
    ("attempts", "job_id",
     {"pk_attempts": "attempts_default_pkey", "ix_attempts_started_at": "attempts_default_started_at_idx"},
     ["CREATE INDEX ix_attempts_started_at ON outbox.attempts (started_at)"],
     "One row per execution attempt, written before the handler starts; partitioned as outbox.jobs."),
    ("job_events", "job_id", {"pk_job_events": "job_events_default_pkey"}, [],
     "Status changes, progress and outcomes of jobs, in order (id is the SSE event id); partitioned as outbox.jobs."),
)
PKS = {"jobs": "id", "attempts": "job_id, attempt", "job_events": "job_id, id"}
# Foreign keys to outbox.jobs dropped (see the docstring), re-created by the downgrade.
FKS = (("pending", "fk_pending_job_id_jobs"), ("leases", "fk_leases_job_id_jobs"),
       ("republished", "fk_republished_job_id_jobs"))
TRIGGERS = ("record_job_event", "enqueue_webhook_delivery")

# The view definitions, read before the tables are renamed (pg_get_viewdef names them outbox.jobs ...).
VIEWS = """
SELECT c.oid::regclass::text, pg_get_viewdef(c.oid) FROM pg_class c
WHERE c.relnamespace = 'outbox'::regnamespace AND c.relkind = 'v' ORDER BY c.oid
"""


def _functions() -> str:
    """The current redrive and enqueue_webhook_delivery, with outbox.uuid7() ids and the key table."""
    redrive = _function(_0001.FUNCTIONS, "redrive")
    webhook = _function(_0013.FUNCTION, "enqueue_webhook_delivery")
    redrive = redrive.replace("new_id uuid := gen_random_uuid();", "new_id uuid := outbox.uuid7();")
    webhook = webhook.replace("delivery uuid := gen_random_uuid();", "delivery uuid := outbox.uuid7();")
    insert = "    INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at)\n    VALUES (delivery,"
    assert insert in webhook
    webhook = webhook.replace(insert, "    INSERT INTO outbox.idempotency_keys (key, job_id)\n"
                                      "    VALUES ('tierbox.webhook:' || NEW.id::text, delivery);\n" + insert)
    return redrive + "\n" + webhook


def _function(source: str, name: str) -> str:
    marker = f"CREATE OR REPLACE FUNCTION outbox.{name}("
    start = source.index(marker if marker in source else f"CREATE FUNCTION outbox.{name}(")
    end = source.index("END $$;", start) + len("END $$;")
    body = source[start:end]
    return body.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


def _views() -> list[tuple[str, str]]:
    return [(str(name), str(body)) for name, body in op.get_bind().execute(sa.text(VIEWS)).all()]


def _recreate_views(views: list[tuple[str, str]]) -> None:
    for name, body in views:
        op.execute(f"CREATE OR REPLACE VIEW {name} AS {body}")


def upgrade() -> None:
    """Rename the three history tables, attach each as the DEFAULT partition of its partitioned successor."""
    views = _views()
    op.execute(UUID7)
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON outbox.jobs")
    for table, name in FKS:
        op.execute(f"ALTER TABLE outbox.{table} DROP CONSTRAINT {name}")
    op.execute("ALTER TABLE outbox.attempts DROP CONSTRAINT fk_attempts_job_id_jobs")
    for table, key, indexes, creates, comment in TABLES:
        op.execute(f"ALTER TABLE outbox.{table} RENAME TO {table}_default")
        for old, new in indexes.items():
            op.execute(f"ALTER INDEX outbox.{old} RENAME TO {new}")
        op.execute(f"CREATE TABLE outbox.{table} (LIKE outbox.{table}_default INCLUDING DEFAULTS INCLUDING "
                   f"CONSTRAINTS INCLUDING COMMENTS) PARTITION BY RANGE ({key})")
        op.execute(f"ALTER TABLE outbox.{table} ADD CONSTRAINT pk_{table} PRIMARY KEY ({PKS[table]})")
        for create in creates:
            op.execute(create)
        op.execute(f"COMMENT ON TABLE outbox.{table} IS '{comment}'")
        op.execute(f"ALTER TABLE outbox.{table} ATTACH PARTITION outbox.{table}_default DEFAULT")
    op.execute(KEYS)
    op.execute("DROP INDEX outbox.uq_jobs_idempotency_key")
    op.execute(_0012.TRIGGER)
    op.execute(_0013.TRIGGER)
    op.execute(_functions())
    _recreate_views(views)


def downgrade() -> None:
    """Fold every partition's rows back into the renamed default tables and restore revision 0016's schema."""
    views = _views()
    for trigger in TRIGGERS:
        op.execute(f"DROP TRIGGER {trigger} ON outbox.jobs")
    for table, _key, indexes, _creates, _comment in TABLES:
        conn = op.get_bind()
        parts = [str(r[0]) for r in conn.execute(sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass) AND c.relname <> :default ORDER BY 1"),
            {"parent": f"outbox.{table}", "default": f"{table}_default"}).all()]
        op.execute(f"ALTER TABLE outbox.{table} DETACH PARTITION outbox.{table}_default")
        for part in parts:
            op.execute(f"INSERT INTO outbox.{table}_default SELECT * FROM outbox.{part}")
        # The parent and its day partitions; the views over it are re-created below.
        for name, _body in views:
            op.execute(f"DROP VIEW IF EXISTS {name} CASCADE")
        op.execute(f"DROP TABLE outbox.{table} CASCADE")
        op.execute(f"ALTER TABLE outbox.{table}_default RENAME TO {table}")
        for old, new in indexes.items():
            op.execute(f"ALTER INDEX outbox.{new} RENAME TO {old}")
    op.execute("CREATE UNIQUE INDEX uq_jobs_idempotency_key ON outbox.jobs (idempotency_key) "
               "WHERE idempotency_key IS NOT NULL")
    op.execute("DROP TABLE outbox.idempotency_keys")
    op.execute("ALTER TABLE outbox.attempts ADD CONSTRAINT fk_attempts_job_id_jobs FOREIGN KEY (job_id) "
               "REFERENCES outbox.jobs (id) ON DELETE CASCADE")
    for table, name in FKS:
        op.execute(f"ALTER TABLE outbox.{table} ADD CONSTRAINT {name} FOREIGN KEY (job_id) "
                   "REFERENCES outbox.jobs (id) ON DELETE CASCADE")
    op.execute(_0012.TRIGGER)
    op.execute(_0013.TRIGGER)
    op.execute(_function(_0001.FUNCTIONS, "redrive"))
    op.execute(_function(_0013.FUNCTION, "enqueue_webhook_delivery"))
    op.execute("DROP FUNCTION outbox.uuid7()")
    _recreate_views(views)
