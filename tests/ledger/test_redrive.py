"""Redrive and discard: one SQL implementation, three callers, one guard in the UPDATE's WHERE."""

from __future__ import annotations

import threading
import uuid

import psycopg
import pytest

import outbox
from tests import sample_tasks  # noqa: F401 - registers the sample tasks
from tests.factories import dead_job


def test_redrive_recreates_the_job_exactly_and_records_lineage(tx: psycopg.Connection) -> None:
    old = dead_job(tx)
    new = outbox.redrive(tx, old, by="alice", reason="provider back")
    job = tx.execute("SELECT task, tier, payload, headers, status, redrive_of, redrive_count, max_retries "
                     "FROM outbox.jobs WHERE id = %s", (new,)).fetchone()
    assert job == ("sample.invoice", "normal", {"args": [1], "kwargs": {"note": "x"}}, {"tenant": "acme"},
                   "pending", old, 1, 3)
    assert tx.execute("SELECT count(*) FROM outbox.pending WHERE job_id = %s", (new,)).fetchone() == (1,)
    dl = tx.execute("SELECT redriven_by, redrive_reason, new_job_id FROM outbox.dead_letters WHERE job_id = %s",
                    (old,)).fetchone()
    assert dl == ("alice", "provider back", new)


def test_redrive_to_another_tier(tx: psycopg.Connection) -> None:
    new = outbox.redrive(tx, dead_job(tx), tier=outbox.Tier.LOW)
    assert tx.execute("SELECT j.tier, p.weight FROM outbox.jobs j JOIN outbox.pending p ON p.job_id = j.id "
                      "WHERE j.id = %s", (new,)).fetchone() == ("low", 3)


def test_second_redrive_and_redrive_after_discard_are_refused_transaction_usable(tx: psycopg.Connection) -> None:
    first, second = dead_job(tx), dead_job(tx)
    outbox.redrive(tx, first)
    with pytest.raises(outbox.RedriveError, match="already redriven") as exc:
        outbox.redrive(tx, first)
    assert exc.value.not_found is False
    outbox.discard(tx, second, by="bob", reason="customer cancelled")
    with pytest.raises(outbox.RedriveError, match="discarded"):
        outbox.redrive(tx, second)
    with pytest.raises(outbox.RedriveError, match="no dead letter") as missing:
        outbox.redrive(tx, uuid.uuid4())
    assert missing.value.not_found is True
    assert tx.execute("SELECT status FROM outbox.jobs WHERE id = %s", (second,)).fetchone() == ("discarded",)
    assert tx.execute("SELECT 1").fetchone() == (1,)  # the caller's transaction is still usable


def test_redrive_where_selects_by_task_and_window(tx: psycopg.Connection) -> None:
    outage = [dead_job(tx, "sample.webhook", failed_ago="30 minutes") for _ in range(3)]
    dead_job(tx, "sample.webhook", failed_ago="3 hours")
    dead_job(tx, "sample.invoice", failed_ago="30 minutes")
    rows = tx.execute("""SELECT job_id FROM outbox.redrive_where(p_task => 'sample.webhook',
                             p_since => now() - interval '1 hour', p_note => 'outage 42')""").fetchall()
    assert sorted(r[0] for r in rows) == sorted(outage)
    again = tx.execute("SELECT count(*) FROM outbox.redrive_where(p_task => 'sample.webhook', "
                       "p_since => now() - interval '1 hour')").fetchone()
    assert again == (0,)


def test_two_operators_racing_one_wins(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        job = dead_job(conn)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def operator() -> None:
        with psycopg.connect(db_url) as conn:
            barrier.wait()
            try:
                outbox.redrive(conn, job)
                conn.commit()
                outcomes.append("won")
            except outbox.RedriveError:
                outcomes.append("refused")

    threads = [threading.Thread(target=operator) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(outcomes) == ["refused", "won"]
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE redrive_of = %s", (job,)).fetchone() == (1,)
