"""Group actions (``tierbox.ops.group_actions``) on groups made by really failing handlers (the ledger's own
start, RETRY and DEAD statements through ``outbox.testing.drain``), on a committed database of the test's own."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

import outbox
from outbox import Tier
from outbox.config import Settings
from tests.triage.test_groups import MAX_RETRIES, charge, fail, find_invoice, find_order
from tierbox.ops import db, triage
from tierbox.ops import group_actions as actions
from tierbox.ops.audit import Actor

ALICE = Actor("alice", "token", "10.0.0.7")


@outbox.task(tier=Tier.HIGH, name="tests.triage.tenant", max_retries=MAX_RETRIES)
def tenant(n: int, ctx: outbox.TaskContext) -> None:
    """Names its group after the tenant: groups whose fingerprints share a prefix."""
    ctx.set_fingerprint(f"tenant-suspended-{n}")
    raise ValueError(f"tenant {n} is suspended")


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    e = db.create_engine(Settings(database_url=db_url))
    yield e
    await e.dispose()


def failed(db_url: str, task: Any, *args: int) -> tuple[str, list[uuid.UUID]]:
    """Dead-letter ``task(n)`` for each n (committed); returns the group's fingerprint and the jobs."""
    with psycopg.connect(db_url) as conn:
        jobs = [fail(conn, task, n) for n in args]
        conn.commit()
        [one] = triage.groups(conn, task=task.name)
    return one.group.fingerprint, jobs


def q(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def audit(db_url: str) -> list[tuple[Any, ...]]:
    """(actor, actor_kind, action, job_ids, client_addr, result, fingerprint) of every audit row, in order."""
    return q(db_url, "SELECT actor, actor_kind, action, job_ids, client_addr, result, detail->>'fingerprint' "
                     "FROM outbox.admin_audit ORDER BY id")


async def test_dry_run_counts_and_changes_nothing(db_url: str, engine: AsyncEngine) -> None:
    fp, _ = failed(db_url, find_order, 1, 2, 3)
    failed(db_url, find_invoice, 1)  # another group, not counted
    result = await actions.redrive_group(engine, ALICE, fp[:6], dry_run_only=True, tier="low")
    plan = result.plan
    assert result.dry_run and result.redriven == 0 and result.fingerprint == fp
    assert (plan.open_dead_letters, plan.redrivable, plan.not_redrivable) == (3, 3, 0)
    assert plan.by_tier == {"high": 3} and plan.by_task == {"tests.triage.find_order": 3} and plan.target_tier == "low"
    assert q(db_url, "SELECT count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL") == [(0,)]
    assert audit(db_url) == []


async def test_a_group_redrive_redrives_each_dead_letter_once_and_audits_each_batch(
        db_url: str, engine: AsyncEngine) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2, 3, 4, 5)
    other, _ = failed(db_url, charge, 1)
    seen: list[tuple[int, int]] = []
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    result = await actions.redrive_group(engine, ALICE, fp, batch=2, rate=1000.0, reason="fixed the lookup",
                                         progress=lambda done, total: seen.append((done, total)), sleep=sleep)
    assert (result.redriven, result.remaining, result.batches, result.stopped) == (5, 0, 3, False)
    assert seen == [(2, 5), (4, 5), (5, 5)] and len(slept) == 2  # paced between batches, not after the last
    assert sorted(j.job_id for j in result.jobs) == sorted(jobs)
    # Each dead letter became exactly one new job, with the reason and the operator on the dead letter.
    rows = q(db_url, "SELECT redrive_of, count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL GROUP BY 1")
    assert sorted(r[0] for r in rows) == sorted(jobs) and {r[1] for r in rows} == {1}
    assert q(db_url, "SELECT DISTINCT redriven_by, redrive_reason FROM outbox.dead_letters WHERE fingerprint = %s",
             fp) == [("alice", "fixed the lookup")]
    # One audit row per batch, naming the operator and the group; together they hold every job once.
    rows = audit(db_url)
    assert [(r[0], r[1], r[2], r[4], r[5], r[6]) for r in rows] == [
        ("alice", "token", "redrive_group", "10.0.0.7", "ok", fp)] * 3
    assert sorted(j for r in rows for j in r[3]) == sorted(jobs)
    with psycopg.connect(db_url) as conn:
        [after] = triage.groups(conn, fingerprint=fp)
        [untouched] = triage.groups(conn, fingerprint=other)
    assert after.group.open_dead_letters == 0 and after.group.dead_letters == 5
    assert untouched.group.open_dead_letters == 1
    # Nothing left: refused, and the refusal is audited too.
    with pytest.raises(actions.NothingToRedriveError) as refused:
        await actions.redrive_group(engine, ALICE, fp)
    assert refused.value.status == 409 and refused.value.field == "fingerprint"
    assert audit(db_url)[-1][2:] == ("redrive_group", [], "10.0.0.7", "refused", fp)


async def test_an_interrupted_redrive_resumes_and_redrives_each_once(db_url: str, engine: AsyncEngine) -> None:
    fp, jobs = failed(db_url, find_order, *range(7))
    batches = 0

    def stop() -> bool:
        return batches >= 2  # the operator pressed Ctrl-C after two batches

    def count(done: int, total: int) -> None:
        nonlocal batches
        batches += 1

    first = await actions.redrive_group(engine, ALICE, fp, batch=2, progress=count, stop=stop)
    assert (first.redriven, first.remaining, first.stopped) == (4, 3, True)
    # Resumed later: only the rest.
    rest = await actions.redrive_group(engine, ALICE, fp, batch=2)
    assert (rest.redriven, rest.remaining, rest.stopped) == (3, 0, False)
    assert {j.job_id for j in first.jobs}.isdisjoint({j.job_id for j in rest.jobs})
    rows = q(db_url, "SELECT redrive_of, count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL GROUP BY 1")
    assert sorted(r[0] for r in rows) == sorted(jobs) and {r[1] for r in rows} == {1}


async def test_a_limit_and_a_tier_override(db_url: str, engine: AsyncEngine) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2, 3)
    done = await actions.redrive_group(engine, ALICE, fp, limit=2, tier="low")
    assert (done.redriven, done.remaining, done.stopped) == (2, 1, True)
    assert q(db_url, "SELECT DISTINCT tier FROM outbox.jobs WHERE redrive_of IS NOT NULL") == [("low",)]
    assert [j.job_id for j in done.jobs] == jobs[:2]  # oldest first


async def test_discard_a_group(db_url: str, engine: AsyncEngine) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2, 3)
    result = await actions.discard_group(engine, ALICE, fp, reason="orders deleted upstream", batch=2)
    assert (result.discarded, result.remaining, result.batches) == (3, 0, 2)
    assert q(db_url, "SELECT DISTINCT status FROM outbox.jobs WHERE id = ANY(%s)", jobs) == [("discarded",)]
    assert q(db_url, "SELECT DISTINCT discarded_by, discard_reason FROM outbox.dead_letters WHERE fingerprint = %s",
             fp) == [("alice", "orders deleted upstream")]
    rows = audit(db_url)
    assert [(r[2], r[5], r[6]) for r in rows] == [("discard_group", "ok", fp)] * 2
    assert sorted(j for r in rows for j in r[3]) == sorted(jobs)
    with pytest.raises(actions.NothingToRedriveError):  # a discarded dead letter is never redriven
        await actions.redrive_group(engine, ALICE, fp)


async def test_resolve_then_a_new_failure_reopens_it_as_a_regression(db_url: str, engine: AsyncEngine) -> None:
    fp, _ = failed(db_url, find_order, 1)
    done = await actions.set_group_status(engine, ALICE, fp, "resolved", note="deployed the fix")
    assert (done.previous, done.status) == ("open", "resolved")
    with psycopg.connect(db_url) as conn:
        [resolved] = triage.groups(conn, fingerprint=fp)
    g = resolved.group
    assert g.status == "resolved" and g.status_by == "alice" and g.status_note == "deployed the fix"
    assert g.resolved_at == g.status_at and not g.regressed
    failed(db_url, find_order, 2)  # the fix did not hold
    with psycopg.connect(db_url) as conn:
        [again] = triage.groups(conn, fingerprint=fp)
    assert again.group.status == "open" and again.group.regressed and "REGRESSED" in again.verdict.evidence
    # Resolved again: no longer a regression; reopened by hand: open, the resolution kept.
    await actions.set_group_status(engine, ALICE, fp, "resolved")
    await actions.set_group_status(engine, ALICE, fp, "open")
    with psycopg.connect(db_url) as conn:
        [reopened] = triage.groups(conn, fingerprint=fp)
    assert reopened.group.status == "open" and not reopened.group.regressed and reopened.group.resolved_at
    assert [(r[2], r[6]) for r in audit(db_url)] == [("group_status", fp)] * 3


async def test_an_ignored_group_stays_ignored(db_url: str, engine: AsyncEngine) -> None:
    fp, _ = failed(db_url, charge, 1)
    await actions.set_group_status(engine, ALICE, fp, "ignored", note="sandbox gateway")
    failed(db_url, charge, 2)
    with psycopg.connect(db_url) as conn:
        [g] = triage.groups(conn, fingerprint=fp)
    assert g.group.status == "ignored" and g.group.regressed_at is None and g.group.dead_letters == 2


async def test_typed_errors(db_url: str, engine: AsyncEngine) -> None:
    fp, _ = failed(db_url, find_order, 1)
    with pytest.raises(actions.UnknownGroupError):
        await actions.redrive_group(engine, ALICE, "no-such-group", dry_run_only=True)
    assert audit(db_url) == []  # a dry run records nothing, not even a refusal
    with pytest.raises(actions.UnknownGroupError) as unknown:
        await actions.redrive_group(engine, ALICE, "no-such-group")
    assert unknown.value.status == 404 and unknown.value.field == "fingerprint"
    assert audit(db_url)[-1][2:] == ("redrive_group", [], "10.0.0.7", "not_found", "no-such-group")
    with pytest.raises(actions.UnknownGroupError):
        await actions.discard_group(engine, ALICE, "no-such-group")
    with pytest.raises(actions.UnknownGroupError):
        await actions.set_group_status(engine, ALICE, "no-such-group", "resolved")
    with pytest.raises(actions.BadGroupStatusError) as bad:
        await actions.set_group_status(engine, ALICE, fp, "fixed")
    assert bad.value.status == 422 and bad.value.field == "status"
    with pytest.raises(actions.RequestError) as bad_batch:
        await actions.redrive_group(engine, ALICE, fp, batch=0)
    assert bad_batch.value.field == "batch"
    with pytest.raises(actions.RequestError) as empty:
        await actions.redrive_group(engine, ALICE, "", dry_run_only=True)
    assert empty.value.field == "fingerprint"


async def test_a_fingerprint_prefix_must_be_unique_and_an_exact_one_wins(db_url: str, engine: AsyncEngine) -> None:
    with psycopg.connect(db_url) as conn:
        for n in (1, 10):
            fail(conn, tenant, n)
        conn.commit()
    with pytest.raises(actions.AmbiguousFingerprintError) as ambiguous:
        await actions.redrive_group(engine, ALICE, "tenant-", dry_run_only=True)
    assert ambiguous.value.status == 422 and "tenant-suspended-1, tenant-suspended-10" in ambiguous.value.message
    exact = await actions.redrive_group(engine, ALICE, "tenant-suspended-1", dry_run_only=True)
    assert exact.fingerprint == "tenant-suspended-1" and exact.plan.redrivable == 1
    longer = await actions.redrive_group(engine, ALICE, "tenant-suspended-10"[:-1] + "0", dry_run_only=True)
    assert longer.fingerprint == "tenant-suspended-10"


async def test_show_has_the_verdict_and_the_sample_jobs(db_url: str, engine: AsyncEngine) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2)
    async with engine.connect() as conn:
        detail = await actions.show(conn, fp[:8])
    assert detail.group.fingerprint == fp and detail.verdict.cause == "data error"
    assert [s.job_id for s in detail.sample_jobs] == jobs[::-1]  # newest first
    assert {s.status for s in detail.sample_jobs} == {"dead"} and detail.evidence.jobs_retried == 2
