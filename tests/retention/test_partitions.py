"""The day-partitioned history (revision 0017, issue #19): v7 ids, partitions made ahead, retention by DROP."""

from __future__ import annotations

import datetime as dt
import time
import uuid
from typing import Any

import psycopg
import pytest

import outbox
from outbox import _partitions as parts
from outbox import _transitions as transitions
from outbox._ids import floor_id, id_time, new_job_id
from outbox._maintenance import prune, prune_detailed
from outbox._sql import run
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.factories import dead_job
from tierbox import migrations

DAY = dt.timedelta(days=1)


def _today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def _id_on(day: dt.date, second: int = 3600) -> uuid.UUID:
    start = dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC)
    return new_job_id(int((start.timestamp() + second) * 1000))


def _where(conn: psycopg.Connection[Any], job_id: uuid.UUID) -> str | None:
    row = conn.execute("SELECT tableoid::regclass::text FROM outbox.jobs WHERE id = %s", (job_id,)).fetchone()
    return None if row is None else str(row[0])


def _insert_job(conn: psycopg.Connection[Any], job_id: uuid.UUID, status: str = "succeeded",
                finished_days_ago: float | None = 40, key: str | None = None) -> None:
    finished = None if finished_days_ago is None else dt.datetime.now(dt.UTC) - dt.timedelta(days=finished_days_ago)
    conn.execute("""INSERT INTO outbox.jobs (id, task, tier, priority, payload, status, attempts, max_retries,
                                             started_at, finished_at, idempotency_key)
                    VALUES (%s, 'sample.t', 'normal', 5, '{}', %s, 1, 3, %s, %s, %s)""",
                 (job_id, status, finished or dt.datetime.now(dt.UTC), finished, key))
    conn.execute("INSERT INTO outbox.attempts (job_id, attempt, worker_id, started_at, finished_at, outcome) "
                 "VALUES (%s, 1, 'w', now(), now(), 'succeeded')", (job_id,))
    conn.execute("INSERT INTO outbox.job_events (job_id, kind, status) VALUES (%s, 'outcome', %s)", (job_id, status))
    if key is not None:
        conn.execute("INSERT INTO outbox.idempotency_keys (key, job_id) VALUES (%s, %s)", (key, job_id))


def _relations(conn: psycopg.Connection[Any], like: str) -> set[str]:
    return {r[0] for r in conn.execute("SELECT relname FROM pg_class WHERE relnamespace = 'outbox'::regnamespace "
                                       "AND relname LIKE %s", (like,))}


# --- ids -----------------------------------------------------------------------------------------------

def test_job_ids_are_uuid7_and_time_ordered() -> None:
    ids = []
    for _ in range(50):
        ids.append(new_job_id())
        time.sleep(0.001)
    assert all(i.version == 7 and i.variant == uuid.RFC_4122 for i in ids)
    assert ids == sorted(ids)
    assert abs(id_time(ids[-1]) - dt.datetime.now(dt.UTC)) < dt.timedelta(seconds=5)
    assert len(set(new_job_id(now_ms=0) for _ in range(1000))) == 1000  # the random bits differ within a ms


def test_sql_uuid7_is_v7_ordered_and_agrees_with_python(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        before = floor_id(dt.datetime.now(dt.UTC) - dt.timedelta(milliseconds=5))
        made = []
        for _ in range(20):
            made.append(conn.execute("SELECT outbox.uuid7()").fetchone()[0])
            time.sleep(0.002)
        after = new_job_id()
    assert all(u.version == 7 and u.variant == uuid.RFC_4122 for u in made)
    assert made == sorted(made) and before < made[0] and made[-1] < after


def test_enqueue_redrive_and_webhook_deliveries_get_v7_ids(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        job = dead_job(conn, "sample.invoice")  # enqueued (outbox.enqueue), then run to its dead letter
        assert job.version == 7 and _where(conn, job) == f"outbox.jobs_p{_today():%Y%m%d}"
        new = outbox.redrive(conn, job, by="test")
        assert new.version == 7 and _where(conn, new) == f"outbox.jobs_p{_today():%Y%m%d}"
        conn.execute("INSERT INTO outbox.webhooks (job_id, url, secret_name, tier, weight, priority, max_retries) "
                     "VALUES (%s, 'https://example.com/h', 'S', 'normal', 5, 5, 3)", (new,))
        conn.execute("DELETE FROM outbox.pending")
        conn.execute("UPDATE outbox.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (new,))
        delivery = conn.execute("SELECT delivery_job_id FROM outbox.webhooks WHERE job_id = %s", (new,)).fetchone()[0]
        assert delivery.version == 7 and _where(conn, delivery) == f"outbox.jobs_p{_today():%Y%m%d}"
        assert conn.execute("SELECT job_id FROM outbox.idempotency_keys WHERE key = %s",
                            (f"tierbox.webhook:{new}",)).fetchone() == (delivery,)


# --- where rows land -------------------------------------------------------------------------------------

def test_ids_land_in_their_day_or_the_default(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        today, old, legacy = new_job_id(), _id_on(_today() - 400 * DAY), uuid.uuid4()
        for job_id in (today, old, legacy):
            _insert_job(conn, job_id, status="pending", finished_days_ago=None)
        assert _where(conn, today) == f"outbox.jobs_p{_today():%Y%m%d}"
        assert _where(conn, old) == "outbox.jobs_default"  # older than every partition
        assert _where(conn, legacy) == "outbox.jobs_default"  # a uuid4 is (all but surely) outside every day
        assert conn.execute("SELECT tableoid::regclass::text FROM outbox.attempts WHERE job_id = %s",
                            (today,)).fetchone() == (f"outbox.attempts_p{_today():%Y%m%d}",)


def test_enqueue_never_fails_without_a_partition_for_now(db_url: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        for table, _key in reversed(parts.TABLES):
            for p in parts.partitions(conn, table):
                conn.execute(f"ALTER TABLE outbox.{table} DETACH PARTITION outbox.{p.name}")
                conn.execute(f"DROP TABLE outbox.{p.name}")
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, "sample.invoice", args=[1])
        conn.commit()
        assert _where(conn, job) == "outbox.jobs_default"
        # and the next maintenance pass creates today around the row now in the default
        created = parts.ensure(conn, days_ahead=1)
        assert any(n.startswith(f"jobs_p{_today():%Y%m%d}_") for n in created), created
        assert _where(conn, job) == "outbox.jobs_default"
        later = outbox.enqueue(conn, "sample.invoice", args=[2])
        conn.commit()
        assert _where(conn, later).startswith(f"outbox.jobs_p{_today():%Y%m%d}_")


def test_a_day_holding_default_rows_is_created_around_them(db_url: str) -> None:
    day = _today() + 30 * DAY  # beyond the partitions made ahead: its ids land in the default for now
    early, late = _id_on(day, 600), _id_on(day, 7200)
    with psycopg.connect(db_url) as conn:
        for job_id in (early, late):
            _insert_job(conn, job_id, status="pending", finished_days_ago=None, key=f"k-{job_id}")
        conn.commit()
        created = parts.create_day(conn, day)
        stem = f"p{day:%Y%m%d}"
        assert sorted(n for n in created if n.startswith("jobs_")) == [f"jobs_{stem}_0", f"jobs_{stem}_1",
                                                                       f"jobs_{stem}_2"]
        assert {_where(conn, early), _where(conn, late)} == {"outbox.jobs_default"}
        between = _id_on(day, 3600)
        _insert_job(conn, between, status="pending", finished_days_ago=None)
        assert _where(conn, between) == f"outbox.jobs_{stem}_1"
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE conname LIKE 'ck\\_not\\_%%'").fetchone() == (0,)


# --- retention ---------------------------------------------------------------------------------------------

def test_prune_drops_an_expired_day_keeps_a_live_one_and_deletes_default_rows(db_url: str) -> None:
    gone_day, kept_day = _today() - 40 * DAY, _today() - 39 * DAY
    with psycopg.connect(db_url) as conn:
        parts.create_day(conn, gone_day)
        parts.create_day(conn, kept_day)
        gone = [_id_on(gone_day, 60 * i) for i in range(1, 6)]
        for i, job_id in enumerate(gone):
            _insert_job(conn, job_id, status="dead" if i == 0 else "succeeded", finished_days_ago=35 if i else 31,
                        key=f"gone-{i}")
        conn.execute("INSERT INTO outbox.webhooks (job_id, url, secret_name, tier, weight, priority, max_retries) "
                     "VALUES (%s, 'https://example.com/h', 'S', 'normal', 5, 5, 3)", (gone[1],))
        kept_old, kept_live = _id_on(kept_day, 60), _id_on(kept_day, 120)
        _insert_job(conn, kept_old, finished_days_ago=35)
        _insert_job(conn, kept_live, status="retrying", finished_days_ago=None)
        legacy_old, legacy_new = uuid.uuid4(), uuid.uuid4()
        _insert_job(conn, legacy_old, finished_days_ago=10, key="legacy-old")
        for stale in (legacy_old, gone[2]):  # a stale republish candidate of a finished job goes with it
            conn.execute("INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at) "
                         "VALUES (%s, 'normal', 5, 5, now() + interval '1 day')", (stale,))
        _insert_job(conn, legacy_new, finished_days_ago=1)
        conn.commit()
        gone_parts = {f"{t}_p{gone_day:%Y%m%d}" for t, _k in parts.TABLES}
        assert _relations(conn, f"%_p{gone_day:%Y%m%d}") == gone_parts

        dropped, deleted = prune_detailed(conn, succeeded_days=7, dead_days=30)

        assert [(d.day, d.jobs) for d in dropped] == [(gone_day, 5)]
        assert set(dropped[0].partitions) == gone_parts
        assert _relations(conn, f"%_p{gone_day:%Y%m%d}") == set()  # DROPped, not emptied by deletes
        assert conn.execute("SELECT count(*) FROM outbox.idempotency_keys WHERE key LIKE 'gone-%%'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox.webhooks WHERE job_id = %s", (gone[1],)).fetchone() == (0,)
        # the day with a live job stays; its expired job is deleted row by row, as the default's
        assert _relations(conn, f"jobs_p{kept_day:%Y%m%d}") == {f"jobs_p{kept_day:%Y%m%d}"}
        assert deleted == 2
        left = {r[0] for r in conn.execute("SELECT id FROM outbox.jobs WHERE id = ANY(%s)",
                                           ([*gone, kept_old, kept_live, legacy_old, legacy_new],))}
        assert left == {kept_live, legacy_new}
        assert conn.execute("SELECT count(*) FROM outbox.attempts WHERE job_id = ANY(%s)",
                            ([legacy_old, kept_old],)).fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox.idempotency_keys WHERE key = 'legacy-old'").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM outbox.pending WHERE job_id = ANY(%s)",
                            ([legacy_old, gone[2]],)).fetchone() == (0,)
        # nothing left to drop or delete: a second prune is a no-op
        assert prune(conn, succeeded_days=7, dead_days=30) == 0


def test_a_day_with_a_dead_job_inside_dead_retention_is_kept(db_url: str) -> None:
    day = _today() - 20 * DAY
    with psycopg.connect(db_url) as conn:
        parts.create_day(conn, day)
        _insert_job(conn, _id_on(day, 60), finished_days_ago=19)
        _insert_job(conn, _id_on(day, 120), status="dead", finished_days_ago=19)
        conn.commit()
        dropped, deleted = prune_detailed(conn, succeeded_days=7, dead_days=30)
        assert dropped == [] and deleted == 1
        assert _relations(conn, f"jobs_p{day:%Y%m%d}") == {f"jobs_p{day:%Y%m%d}"}


# --- idempotency across partitions ----------------------------------------------------------------------

def _enqueue_one(conn: psycopg.Connection[Any], job_id: uuid.UUID, key: str) -> tuple[Any, ...]:
    return tuple(run(conn, transitions.ENQUEUE_ONE, {
        "id": job_id, "task": "sample.invoice", "tier": "normal", "weight": 5, "priority": 5, "payload": "{}",
        "headers": "{}", "key": key, "max_retries": 3, "run_at": None, "delay_s": None, "expires_at": None,
        "expires_s": None, "explicit": False})[0])


def test_a_key_used_in_one_day_is_refused_in_another(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        yesterday = _id_on(_today() - DAY)
        assert _enqueue_one(conn, yesterday, "same-key") == (1, yesterday, True)
        assert _where(conn, yesterday) == f"outbox.jobs_p{_today() - DAY:%Y%m%d}"
        today = new_job_id()
        assert _enqueue_one(conn, today, "same-key") == (1, yesterday, False)
        assert _where(conn, today) is None
        again = outbox.enqueue(conn, "sample.invoice", args=[1], idempotency_key="same-key")
        assert again == yesterday


# --- the migration of an existing ledger -------------------------------------------------------------------

def test_migration_0017_keeps_an_existing_ledger_reachable_and_goes_down_and_up(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url, "0016")
    with psycopg.connect(empty_db_url) as conn:
        ids = [uuid.uuid4() for _ in range(20)]
        for i, job_id in enumerate(ids):
            conn.execute("""INSERT INTO outbox.jobs (id, task, tier, priority, payload, status, attempts, max_retries,
                                                     started_at, idempotency_key)
                            VALUES (%s, 'sample.t', 'normal', 5, '{}', 'running', 1, 3, now(), %s)""",
                         (job_id, f"key-{i}" if i % 2 else None))
            conn.execute("INSERT INTO outbox.attempts (job_id, attempt, worker_id) VALUES (%s, 1, 'w')", (job_id,))
        conn.execute("INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at) "
                     "VALUES (%s, 'normal', 5, 5, now())", (ids[0],))
        conn.commit()
    migrations.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert {_where(conn, i) for i in ids} == {"outbox.jobs_default"}
        assert conn.execute("SELECT count(*) FROM outbox.attempts WHERE job_id = ANY(%s)", (ids,)).fetchone() == (20,)
        assert conn.execute("SELECT count(*) FROM outbox.idempotency_keys").fetchone() == (10,)
        assert outbox.enqueue(conn, "sample.invoice", idempotency_key="key-1") == ids[1]
        assert conn.execute("SELECT job_id FROM outbox.pending").fetchall() == [(ids[0],)]
        # the attempts, pending, leases and republished foreign keys are gone (the revision's docstring)
        assert conn.execute("SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
                            "AND connamespace = 'outbox'::regnamespace").fetchone() == (0,)
        new = outbox.enqueue(conn, "sample.invoice", args=[1])
        conn.commit()
        # The day the id itself names (not today's date, read later: a run crossing midnight would differ).
        assert _where(conn, new) == f"outbox.jobs_p{id_time(new).date():%Y%m%d}"
    migrations.downgrade(empty_db_url, "0016")
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE id = ANY(%s)", ([*ids, new],)).fetchone() == (21,)
        assert conn.execute("SELECT relkind FROM pg_class WHERE oid = 'outbox.jobs'::regclass").fetchone() == ("r",)
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute("INSERT INTO outbox.jobs (id, task, tier, priority, payload, max_retries, idempotency_key) "
                         "VALUES (gen_random_uuid(), 't', 'normal', 5, '{}', 3, 'key-1')")
        conn.rollback()
        with pytest.raises(psycopg.errors.ForeignKeyViolation):  # revision 0016's foreign keys are back
            conn.execute("INSERT INTO outbox.pending (job_id, tier, weight, priority, available_at) "
                         "VALUES (%s, 'normal', 5, 5, now())", (uuid.uuid4(),))
    migrations.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert _where(conn, new) == "outbox.jobs_default"  # folded back by the downgrade: it stays there
        assert conn.execute("SELECT count(*) FROM outbox.jobs").fetchone() == (21,)


# --- the operator commands ------------------------------------------------------------------------------

def test_tierbox_partitions_and_prune_print_what_they_did(db_url: str) -> None:
    from tests.cli.test_cli import run_cli

    far = _today() + 9 * DAY  # one day past the 7 made ahead at migration
    result = run_cli("partitions", "--days-ahead", "9", env={"TIERBOX_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert f"created jobs_p{far:%Y%m%d}" in result.stdout.splitlines()
    assert result.stdout.splitlines()[-1].startswith("11 days of partitions (")
    day = _today() - 40 * DAY
    with psycopg.connect(db_url) as conn:
        parts.create_day(conn, day)
        _insert_job(conn, _id_on(day), finished_days_ago=35)
        conn.commit()
    result = run_cli("prune", env={"TIERBOX_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"dropped {day}: 1 jobs (jobs_p{day:%Y%m%d}, attempts_p{day:%Y%m%d}, job_events_p{day:%Y%m%d})",
        "pruned 1 jobs (1 in 1 dropped days, 0 deleted row by row)"]


def test_a_day_of_successes_is_dropped_after_the_succeeded_retention_not_the_dead_one(db_url: str) -> None:
    day = _today() - 10 * DAY
    with psycopg.connect(db_url) as conn:
        parts.create_day(conn, day)
        for i in range(3):
            _insert_job(conn, _id_on(day, 60 * (i + 1)), finished_days_ago=9)
        conn.commit()
        dropped, deleted = prune_detailed(conn, succeeded_days=7, dead_days=30)
        assert [(d.day, d.jobs) for d in dropped] == [(day, 3)] and deleted == 0


def test_a_day_is_split_around_jobs_whose_attempts_repeat_their_id(db_url: str) -> None:
    day = _today() + 31 * DAY
    ids = [_id_on(day, 600 * (i + 1)) for i in range(6)]
    with psycopg.connect(db_url) as conn:
        for job_id in ids:
            _insert_job(conn, job_id, status="running", finished_days_ago=None)
            for attempt in range(2, 5):  # several attempts per job: the same job_id many times in attempts
                conn.execute("INSERT INTO outbox.attempts (job_id, attempt, worker_id) VALUES (%s, %s, 'w')",
                             (job_id, attempt))
        conn.commit()
        created = parts.create_day(conn, day)
        assert len([n for n in created if n.startswith("attempts_")]) == 7  # six gaps around six ids
        assert {_where(conn, i) for i in ids} == {"outbox.jobs_default"}
