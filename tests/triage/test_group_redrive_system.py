"""Group actions end to end: real relay and worker processes, real failing handlers, the cause fixed, the group
redriven (paced, interrupted, resumed), each job run once; and dead letters RabbitMQ itself produced."""

from __future__ import annotations

import psycopg
import pytest

from outbox._encoding import encode_envelope
from tests.system import System
from tierbox.ops import db, triage
from tierbox.ops import group_actions as actions
from tierbox.ops.audit import Actor

pytestmark = pytest.mark.slow

OPERATOR = Actor("ops-bob", "token", "192.0.2.1")


def group_of(system: System, task: str) -> triage.TriagedGroup:
    with psycopg.connect(system.settings.database_url) as conn:
        [one] = triage.groups(conn, task=task)
    return one


async def test_a_group_redrive_runs_each_job_once_after_the_fix(system: System) -> None:
    system.relay()
    system.worker()
    jobs = [system.enqueue("sample.needs_flag") for _ in range(5)]
    for job in jobs:
        system.wait_status(job, "dead")
    group = group_of(system, "sample.needs_flag")
    fp = group.group.fingerprint
    assert group.group.dead_letters == 5 and group.group.error_type == "RuntimeError"
    system.q("INSERT INTO public.test_flags VALUES (1) RETURNING id")  # the operator fixes the cause
    engine = db.create_engine(system.settings)
    try:
        batches: list[int] = []
        first = await actions.redrive_group(engine, OPERATOR, fp[:7], batch=2, rate=20.0,
                                            progress=lambda done, total: batches.append(done),
                                            stop=lambda: len(batches) >= 1)  # interrupted after one batch
        assert (first.redriven, first.remaining, first.stopped) == (2, 3, True)
        rest = await actions.redrive_group(engine, OPERATOR, fp, batch=2, rate=20.0)
        assert (rest.redriven, rest.remaining, rest.stopped, rest.batches) == (3, 0, False, 2)
    finally:
        await engine.dispose()
    new_jobs = [j.new_job_id for j in [*first.jobs, *rest.jobs]]
    assert sorted(j.job_id for j in [*first.jobs, *rest.jobs]) == sorted(jobs)
    for job in new_jobs:
        system.wait_status(job, "succeeded")
    # Each redriven job ran once: one attempt, one effect (written in the job's own transaction).
    for job in new_jobs:
        assert system.outcomes(job) == ["succeeded"] and system.effects(job) == [(1, "flag")]
    assert system.q("SELECT count(*) FROM public.test_effects") == [(5,)]
    assert system.q("SELECT count(*) FROM outbox.jobs WHERE redrive_of = ANY(%s)", jobs) == [(5,)]
    # One audit row per batch, naming the operator and the group.
    rows = system.q("SELECT actor, actor_kind, action, client_addr, result, detail->>'fingerprint', job_ids "
                    "FROM outbox.admin_audit ORDER BY id")
    assert [r[:6] for r in rows] == [("ops-bob", "token", "redrive_group", "192.0.2.1", "ok", fp)] * 3
    assert sorted(j for r in rows for j in r[6]) == sorted(jobs)
    assert group_of(system, "sample.needs_flag").group.open_dead_letters == 0


async def test_a_message_the_broker_expired_is_a_broker_dead_letter(system: System) -> None:
    worker = system.worker()  # declares the queues and their dlqs
    worker.stop()  # nobody consumes: the message expires in the queue
    job = system.enqueue("sample.effect", "expired")  # no relay: the job waits in the outbox
    [(payload,)] = system.q("SELECT payload::text FROM outbox.jobs WHERE id = %s", job)
    await system.publish_raw("high", encode_envelope(job, "sample.effect", "high", payload, None),
                             expiration=0.001)  # a 1 ms TTL: RabbitMQ dead-letters it as 'expired'
    await system.publish_raw("high", b"\x00not an envelope", expiration=0.001)
    system.worker()  # its dlq sweeper records both
    system.wait_status(job, "dead")
    system.wait(lambda: system.q("SELECT count(*) FROM outbox.dead_letters WHERE reason = 'expired'") == [(2,)],
                what="both expired messages dead-lettered")
    with psycopg.connect(system.settings.database_url) as conn:
        found = [g for g in triage.groups(conn) if "expired" in g.group.reasons]
    assert {g.group.error_type for g in found} == {"BrokerDeadLettered"}
    assert {g.verdict.cause for g in found} == {"broker dead letter"} and {g.verdict.rule for g in found} == {
        "broker_dead_letter"}
    assert all("TTL" in g.verdict.action and "x-death reason expired" in g.verdict.evidence for g in found)
    # The job's dead letter can be redriven (the worker now runs it once); the raw message only discarded.
    engine = db.create_engine(system.settings)
    try:
        plans = [await actions.redrive_group(engine, OPERATOR, g.group.fingerprint, dry_run_only=True) for g in found]
        assert sum(p.plan.redrivable for p in plans) == 1 and sum(p.plan.not_redrivable for p in plans) == 1
        done = 0
        for g, plan in zip(found, plans, strict=True):
            if plan.plan.redrivable:
                result = await actions.redrive_group(engine, OPERATOR, g.group.fingerprint)
                [redriven] = result.jobs
                done += 1
            if plan.plan.not_redrivable and not plan.plan.redrivable:
                with pytest.raises(actions.NothingToRedriveError):
                    await actions.redrive_group(engine, OPERATOR, g.group.fingerprint)
                assert (await actions.discard_group(engine, OPERATOR, g.group.fingerprint)).discarded == 1
    finally:
        await engine.dispose()
    assert done == 1
    system.relay()
    system.wait_status(redriven.new_job_id, "succeeded")
    assert system.effects(redriven.new_job_id) == [(1, "expired")]
