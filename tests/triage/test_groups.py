"""Failure groups formed by the real failure path (``outbox.testing.drain``: the ledger's own start,
RETRY and DEAD statements) and triaged by ``tierbox.ops.triage`` on real Postgres."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

import outbox
import outbox.testing
from outbox import Tier
from outbox import _transitions as transitions
from outbox._failure import ErrorInfo
from outbox.registry import Registry
from tierbox.ops import triage

REAP_MIGRATION = importlib.import_module("tierbox.migrations.versions.0009_failure_groups")

MAX_RETRIES = 2


@outbox.task(tier=Tier.HIGH, name="tests.triage.find_order", max_retries=MAX_RETRIES)
def find_order(order_id: int) -> None:
    """A data error: the order is not there, on every attempt."""
    raise LookupError(f"order {order_id} not found")


@outbox.task(tier=Tier.HIGH, name="tests.triage.find_invoice", max_retries=MAX_RETRIES)
def find_invoice(order_id: int) -> None:
    """The same message as find_order, from another code path."""
    raise LookupError(f"order {order_id} not found")


@outbox.task(tier=Tier.NORMAL, name="tests.triage.charge", max_retries=MAX_RETRIES)
def charge(n: int) -> None:
    """A provider outage: the payment gateway refuses connections."""
    raise ConnectionError(f"POST https://pay.example/v2/charge?order={n}&key=k{n} failed: connection refused")


@outbox.task(tier=Tier.NORMAL, name="tests.triage.sync_crm", max_retries=MAX_RETRIES)
def sync_crm(n: int) -> None:
    """Rate limited by the downstream."""
    raise RuntimeError(f"HTTP 429 Too Many Requests for account {n} (retry after 30 s)")


@outbox.task(tier=Tier.LOW, name="tests.triage.render", max_retries=MAX_RETRIES)
def render(n: int) -> None:
    """A code defect: adds a string to an int."""
    total = n + "items"  # type: ignore[operator]  # the bug under test
    print(total)


@outbox.task(tier=Tier.HIGH, name="tests.triage.ctx_fingerprint", max_retries=MAX_RETRIES)
def ctx_fingerprint(n: int, ctx: outbox.TaskContext) -> None:
    """Names its own failure group through ctx."""
    ctx.set_fingerprint("tenant-suspended")
    raise ValueError(f"tenant {n} is suspended since {n} days")


@outbox.task(tier=Tier.HIGH, name="tests.triage.reject_fingerprint", max_retries=MAX_RETRIES)
def reject_fingerprint(n: int, ctx: outbox.TaskContext) -> None:
    """Reject with an explicit fingerprint, which wins over the one set on ctx."""
    ctx.fingerprint = "from-ctx"
    raise outbox.Reject(f"VAT id DE{n} invalid", fingerprint="vat-invalid")


@outbox.task(tier=Tier.LOW, name="tests.triage.label", max_retries=MAX_RETRIES)
def label(n: int) -> None:
    """A code defect that is a KeyError: a subscript for a key the code should have checked."""
    order: dict[str, str] = {"id": str(n)}
    print(order["shipping_address"])


class SyncError(Exception):
    """An application's wrapper exception, raised ``from`` the downstream's error."""


def _crm_call(n: int, how: str) -> None:
    if how == "reset":
        raise ConnectionResetError(104, f"Connection reset by peer (10.0.0.{n}:443)")
    raise RuntimeError(f"Client error '429 Too Many Requests' for url 'https://crm.example/c/{n}'")


@outbox.task(tier=Tier.NORMAL, name="tests.triage.sync_account_reset", max_retries=MAX_RETRIES)
def sync_account_reset(n: int) -> None:
    """A provider outage hidden behind the application's own exception type."""
    try:
        _crm_call(n, "reset")
    except OSError as exc:
        raise SyncError(f"CRM sync for account {n} failed") from exc


@outbox.task(tier=Tier.NORMAL, name="tests.triage.sync_account_throttled", max_retries=MAX_RETRIES)
def sync_account_throttled(n: int) -> None:
    """A rate limit hidden behind the application's own exception type."""
    try:
        _crm_call(n, "429")
    except RuntimeError as exc:
        raise SyncError(f"CRM sync for account {n} failed") from exc


@outbox.task(tier=Tier.HIGH, name="tests.triage.over_limit", max_retries=MAX_RETRIES)
def over_limit(n: int) -> None:
    """A data error whose amount happens to be 429: not a rate limit."""
    raise ValueError(f"amount 429 exceeds the limit for order {n}")


@outbox.task(tier=Tier.NORMAL, name="tests.triage.reserve_stock", max_retries=MAX_RETRIES)
def reserve_stock(n: int) -> None:
    """An outage said in words other than 'temporarily unavailable'."""
    raise RuntimeError(f"warehouse {n}: downstream unavailable")


def fail(conn: psycopg.Connection[Any], task: Any, *args: Any, registry_: Registry | None = None) -> uuid.UUID:
    """Enqueue ``task(*args)`` and drain it until it is dead (every attempt fails through the real path)."""
    job = outbox.enqueue(conn, task, args=list(args))
    for _ in range(MAX_RETRIES + 1):
        [ran] = outbox.testing.drain(conn, jobs=[job], registry_=registry_)
        if ran.status == "dead":
            return job
        assert ran.status == "retrying", ran
    raise AssertionError(f"{task} was not dead-lettered")


def by_task(conn: psycopg.Connection[Any], task: str) -> list[triage.TriagedGroup]:
    return triage.groups(conn, task=task)


@pytest.fixture
def conn(tx: psycopg.Connection[Any]) -> Iterator[psycopg.Connection[Any]]:
    yield tx


def test_ids_do_not_split_a_group_and_it_is_a_data_error(conn: psycopg.Connection[Any]) -> None:
    jobs = [fail(conn, find_order, n) for n in (123, 456, 789)]
    [one] = by_task(conn, "tests.triage.find_order")
    g = one.group
    assert g.error_type == "LookupError" and g.message == "order <n> not found"
    assert g.sample_message == "order 789 not found"
    assert g.failed_attempts == 3 * (MAX_RETRIES + 1) and g.dead_letters == 3 and g.open_dead_letters == 3
    assert set(g.sample_job_ids) == set(jobs) and g.tasks == ["tests.triage.find_order"] and g.tiers == ["high"]
    assert g.outcomes == ["failed"] and g.reasons == ["failed"] and g.status == "open"
    assert g.first_seen <= g.last_seen and g.frames[0] == "tests.triage.test_groups:find_order"
    assert one.evidence.jobs_retried == 3 and one.evidence.jobs_same_every_attempt == 3
    assert one.verdict.cause == "data error" and one.verdict.rule == "data_error"
    assert "3 of 3 retried job(s) failed the same way on every attempt" in one.verdict.evidence
    assert "discard" in one.verdict.action
    # Every attempt and the dead letters carry the group's fingerprint.
    rows = conn.execute("SELECT DISTINCT fingerprint FROM outbox.attempts WHERE job_id = ANY(%s)", (jobs,)).fetchall()
    assert rows == [(g.fingerprint,)]
    rows = conn.execute("SELECT DISTINCT fingerprint FROM outbox.dead_letters WHERE job_id = ANY(%s)",
                        (jobs,)).fetchall()
    assert rows == [(g.fingerprint,)]
    # A redrive closes a dead letter: the open count follows, the history does not change.
    outbox.redrive(conn, jobs[0])
    [after] = triage.groups(conn, fingerprint=g.fingerprint)
    assert after.group.open_dead_letters == 2 and after.group.dead_letters == 3


def test_a_different_code_path_is_another_group(conn: psycopg.Connection[Any]) -> None:
    fail(conn, find_order, 1)
    fail(conn, find_invoice, 1)
    [order] = by_task(conn, "tests.triage.find_order")
    [invoice] = by_task(conn, "tests.triage.find_invoice")
    assert order.group.message == invoice.group.message == "order <n> not found"
    assert order.group.fingerprint != invoice.group.fingerprint


@pytest.mark.parametrize(("task", "cause", "action", "evidence"), [
    (charge, "provider outage", "redrive when the breaker is closed", "'connection refused'"),
    (sync_crm, "rate limited", "redrive paced", "'HTTP 429'"),
    (label, "code defect", "fix, deploy, then redrive the group", "KeyError in tests.triage.test_groups:label"),
    (sync_account_reset, "provider outage", "redrive when the breaker is closed", "type SyncError <- ConnectionResetError"),
    (sync_account_throttled, "rate limited", "redrive paced", "Too Many Requests"),
    (over_limit, "data error", "discard the jobs or fix their data", "type ValueError"),
    (reserve_stock, "provider outage", "redrive when the breaker is closed", "'downstream unavailable'"),
    (render, "code defect", "fix, deploy, then redrive the group", "TypeError in tests.triage.test_groups:render"),
])
def test_each_class_gets_its_cause(conn: psycopg.Connection[Any], task: Any, cause: str, action: str,
                                   evidence: str) -> None:
    fail(conn, task, 1)
    fail(conn, task, 2)
    [one] = by_task(conn, task.name)
    assert one.group.failed_attempts == 2 * (MAX_RETRIES + 1) and one.group.dead_letters == 2
    assert one.verdict.cause == cause and one.verdict.rule == cause.replace(" ", "_")
    assert action in one.verdict.action and evidence in one.verdict.evidence, one.verdict


def test_an_unknown_task_is_a_poison_message(conn: psycopg.Connection[Any]) -> None:
    other = Registry()  # the draining "worker" knows another task, not this one (an empty one means "the default")
    other.add(find_invoice)
    fail(conn, find_order, 5, registry_=other)
    [one] = by_task(conn, "tests.triage.find_order")
    assert one.group.reasons == ["unknown_task"] and one.group.failed_attempts == 1
    assert one.verdict.cause == "poison message" and "unknown_task" in one.verdict.evidence


def test_an_explicit_fingerprint_wins(conn: psycopg.Connection[Any]) -> None:
    fail(conn, ctx_fingerprint, 1)
    fail(conn, ctx_fingerprint, 2)
    fail(conn, reject_fingerprint, 3)
    [ctx_group] = by_task(conn, "tests.triage.ctx_fingerprint")
    assert ctx_group.group.fingerprint == "tenant-suspended" and ctx_group.group.dead_letters == 2
    [rejected] = by_task(conn, "tests.triage.reject_fingerprint")
    assert rejected.group.fingerprint == "vat-invalid"  # Reject's own, not the one set on ctx
    assert rejected.group.reasons == ["non_retryable"] and rejected.group.failed_attempts == 1
    assert rejected.verdict.cause == "data error" and "Reject" in rejected.verdict.evidence
    assert triage.groups(conn, fingerprint="from-ctx") == []


def test_a_resolved_group_reopens_on_a_new_failure(conn: psycopg.Connection[Any]) -> None:
    fail(conn, find_order, 1)
    [before] = by_task(conn, "tests.triage.find_order")
    fp = before.group.fingerprint
    # Resolving is an operator action of a later slice; here it is the row's columns, as it will set them.
    conn.execute("UPDATE outbox.failure_groups SET status = 'resolved', resolved_at = clock_timestamp() "
                 "WHERE fingerprint = %s", (fp,))
    [resolved] = triage.groups(conn, fingerprint=fp)
    assert resolved.group.status == "resolved" and not resolved.group.regressed
    assert triage.groups(conn, fingerprint=fp, status="open") == []
    fail(conn, find_order, 2)  # the regression
    [again] = triage.groups(conn, fingerprint=fp, status="open")
    g = again.group
    assert g.status == "open" and g.regressed and g.regressed_at is not None and g.resolved_at is not None
    assert g.regressed_at > g.resolved_at and g.dead_letters == 2
    assert "REGRESSED" in again.verdict.evidence


def test_an_ignored_group_stays_ignored(conn: psycopg.Connection[Any]) -> None:
    fail(conn, charge, 1)
    [one] = by_task(conn, "tests.triage.charge")
    conn.execute("UPDATE outbox.failure_groups SET status = 'ignored' WHERE fingerprint = %s",
                 (one.group.fingerprint,))
    fail(conn, charge, 2)
    [after] = by_task(conn, "tests.triage.charge")
    assert after.group.status == "ignored" and after.group.regressed_at is None and after.group.dead_letters == 2


def test_an_application_rule_is_tried_first(conn: psycopg.Connection[Any]) -> None:
    def crm_quota(group: triage.Group, evidence: triage.Evidence) -> triage.Verdict | None:
        if "tests.triage.sync_crm" in group.tasks:
            return triage.Verdict("CRM quota", "ask the CRM team for more quota", f"{group.failed_attempts} failures")
        return None

    fail(conn, sync_crm, 1)
    fail(conn, find_order, 1)
    triage.register_rule(crm_quota)
    try:
        assert triage.rules()[0] is crm_quota and len(triage.rules()) == len(triage.BUILTIN_RULES) + 1
        [one] = by_task(conn, "tests.triage.sync_crm")
        assert (one.verdict.cause, one.verdict.rule) == ("CRM quota", "crm_quota")
        [other] = by_task(conn, "tests.triage.find_order")  # the rule passes: the built-ins decide
        assert other.verdict.cause == "data error"
    finally:
        triage.unregister_rule(crm_quota)
    [builtin] = by_task(conn, "tests.triage.sync_crm")
    assert builtin.verdict.cause == "rate limited"


def test_sample_job_ids_are_bounded_and_unique(conn: psycopg.Connection[Any]) -> None:
    jobs = [fail(conn, find_order, n) for n in range(12)]
    [one] = by_task(conn, "tests.triage.find_order")
    assert len(one.group.sample_job_ids) == 10 and len(set(one.group.sample_job_ids)) == 10
    assert one.group.sample_job_ids[0] == jobs[-1]  # newest first
    assert one.group.failed_attempts == 12 * (MAX_RETRIES + 1)


def test_the_reaper_files_crashes_into_a_group(conn: psycopg.Connection[Any]) -> None:
    jobs = [outbox.enqueue(conn, find_order, args=[n], max_retries=n) for n in (0, 1)]
    for job in jobs:
        [(decision, *_)] = conn.execute(transitions.START_ATTEMPT.pg, {
            "job_id": job, "worker_id": "w", "lease_s": 30.0, "acked_early": False, "token": None}).fetchall()
        assert decision == "run"
    conn.execute("UPDATE outbox.leases SET expires_at = now() - interval '1 second' WHERE job_id = ANY(%s)", (jobs,))
    assert sorted(conn.execute(transitions.REAP.pg, {"limit": 10}).fetchall()) == sorted(
        [(jobs[0], "dead"), (jobs[1], "retry")])
    [one] = by_task(conn, "tests.triage.find_order")
    g = one.group
    assert g.fingerprint == REAP_MIGRATION.WORKER_LOST_FINGERPRINT and g.error_type == "WorkerLost"
    assert g.failed_attempts == 2 and g.dead_letters == 1 and g.open_dead_letters == 1
    assert g.outcomes == ["crashed"] and g.reasons == ["crashed"] and set(g.sample_job_ids) == set(jobs)
    assert one.verdict.cause == "crashed"
    assert conn.execute("SELECT fingerprint FROM outbox.dead_letters WHERE job_id = %s", (jobs[0],)).fetchone() == (
        g.fingerprint,)


def test_the_reapers_fingerprint_is_pythons() -> None:
    # The reaper (SQL) hard-codes the fingerprint of its one message; Python must compute the same.
    message = re.search(r"msg text := '([^']+)'", REAP_MIGRATION.reap_0009())
    assert message is not None
    assert ErrorInfo("WorkerLost", message.group(1)).params()["fingerprint"] == REAP_MIGRATION.WORKER_LOST_FINGERPRINT


async def test_groups_async_reads_the_same_groups(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        fail(conn, charge, 1)
        conn.commit()
        sync = triage.groups(conn)
    async with await psycopg.AsyncConnection.connect(db_url) as aconn:
        got = await triage.groups_async(aconn)
    assert [g.group.fingerprint for g in got] == [g.group.fingerprint for g in sync] and len(got) == 1
    assert got[0].verdict == sync[0].verdict and got[0].verdict.cause == "provider outage"
