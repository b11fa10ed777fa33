"""Retention: finished jobs past their age are deleted in short batches; live jobs never are."""

from __future__ import annotations

import psycopg

import outbox
from outbox._maintenance import prune
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.factories import dead_job


def test_prune_deletes_only_finished_jobs_past_retention(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        ids = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[i]) for i in range(5)])
        old_ok, new_ok, live, old_expired, redriven = ids
        # Dead letters from real failing runs (attempts, events, failure group and all), failed long ago.
        old_dead = dead_job(conn, "sample.invoice", failed_ago="31 days")
        dead_recent = dead_job(conn, "sample.invoice", failed_ago="8 days")
        conn.execute("DELETE FROM outbox.pending")
        conn.execute("""UPDATE outbox.jobs SET status = 'succeeded', finished_at = now() - interval '8 days'
                        WHERE id = ANY(%s)""", ([old_ok],))
        conn.execute("""UPDATE outbox.jobs SET status = 'expired', finished_at = now() - interval '8 days'
                        WHERE id = ANY(%s)""", ([old_expired],))
        conn.execute("UPDATE outbox.jobs SET status = 'succeeded', finished_at = now() WHERE id = %s", (new_ok,))
        conn.commit()
        assert prune(conn, succeeded_days=7, dead_days=30, batch=1) == 3
        left = {r[0] for r in conn.execute("SELECT id FROM outbox.jobs")}
        dead_letters = {r[0] for r in conn.execute("SELECT job_id FROM outbox.dead_letters")}
    assert left == {new_ok, live, dead_recent, redriven}
    # Unsettled dead letters are kept however old (docs/failures-in-sql.md), their job pruned or not.
    assert dead_letters == {old_dead, dead_recent}
