"""Declaring webhooks, in-process against real Postgres: the SSRF guard at enqueue, and the trigger
that writes the delivery job in the transaction recording the outcome (and in no other)."""

from __future__ import annotations

import uuid

import msgspec
import psycopg
import pytest

import outbox
import outbox.testing
from outbox import webhooks
from outbox._sql import run
from outbox.registry import Registry
from outbox.tiers import DEFAULT_TOPOLOGY
from tests.webhooks.conftest import OLD_SECRET

reg = Registry()


@outbox.task(tier=outbox.Tier.HIGH, name="wh.ok", registry_=reg)
def ok() -> None:
    """Succeeds."""


@outbox.task(tier=outbox.Tier.HIGH, name="wh.no", registry_=reg)
def no() -> None:
    """Fails for good."""
    raise outbox.Reject("no")


@outbox.task(tier=outbox.Tier.HIGH, name="wh.declared", registry_=reg,
             on_complete=outbox.Webhook(url="http://127.0.0.1:9/task-level", secret="crm"))
def declared() -> None:
    """Announces every job of the task."""


HOOK = outbox.Webhook(url="http://127.0.0.1:9/hooks", secret="crm")


def deliveries(conn: psycopg.Connection, job_id: uuid.UUID) -> list[tuple[object, ...]]:
    return conn.execute(
        "SELECT d.task, d.tier, d.payload->'args', d.max_retries, w.outcome, p.job_id IS NOT NULL "
        "FROM outbox.webhooks w JOIN outbox.jobs d ON d.id = w.delivery_job_id "
        "LEFT JOIN outbox.pending p ON p.job_id = d.id WHERE w.job_id = %s", (job_id,)).fetchall()


@pytest.mark.parametrize(("url", "why"), [
    ("https://10.1.2.3/hook", "private"),
    ("https://169.254.169.254/latest/meta-data", "cloud metadata"),
    ("https://[fd00:ec2::254]/", "cloud metadata"),
    ("https://[::1]:8443/x", "loopback"),
    ("https://localhost/x", "loopback"),
    ("https://0.0.0.0/x", "unspecified"),
    ("https://224.0.0.1/x", "multicast"),
    ("https://[::ffff:192.168.1.1]/x", "private"),
], ids=["private", "metadata-v4", "metadata-v6", "loopback-v6", "localhost", "unspecified", "multicast", "mapped"])
def test_private_addresses_are_refused_at_enqueue_and_the_transaction_stays_usable(db_url: str, url: str,
                                                                                    why: str) -> None:
    with psycopg.connect(db_url) as conn:
        with pytest.raises(outbox.WebhookError) as err:
            outbox.enqueue(conn, ok, webhook=outbox.Webhook(url=url, secret="crm"))
        assert err.value.field == "webhook.url" and why in str(err.value) and "TIERBOX_WEBHOOK_ALLOW" in str(err.value)
        assert isinstance(err.value, outbox.EnqueueError)
        job = outbox.enqueue(conn, ok)  # nothing was sent: the transaction goes on
        conn.commit()
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE id = %s", (job,)).fetchone() == (1,)
        assert conn.execute("SELECT count(*) FROM outbox.webhooks").fetchone() == (0,)


def test_declarations_are_checked_and_secret_values_are_not_echoed(db_url: str, allow_loopback: None) -> None:
    with psycopg.connect(db_url) as conn:
        with pytest.raises(outbox.WebhookError) as err:
            outbox.enqueue(conn, ok, webhook=outbox.Webhook(url=HOOK.url, secret=OLD_SECRET))
        assert err.value.field == "webhook.secret" and OLD_SECRET not in str(err.value)
        for bad, field in [("ftp://127.0.0.1/x", "webhook.url"), ("https://u:p@127.0.0.1/x", "webhook.url"),
                           ("not a url", "webhook.url")]:
            with pytest.raises(outbox.WebhookError) as err:
                outbox.enqueue(conn, ok, webhook=outbox.Webhook(url=bad, secret="crm"))
            assert err.value.field == field, bad
        with pytest.raises(outbox.WebhookError) as err:
            outbox.enqueue(conn, ok, webhook={"url": HOOK.url})  # type: ignore[typeddict-item]
        assert err.value.field == "webhook"
        with pytest.raises(outbox.RegistryError, match=r"on_complete\.secret"):
            outbox.task(lambda: None, name="wh.bad", registry_=Registry(),
                        on_complete=outbox.Webhook(url=HOOK.url, secret="has space"))
        # Allowed, plain http is fine for an allow-listed host; elsewhere https is required.
        outbox.enqueue(conn, ok, webhook=HOOK)
        conn.rollback()
    webhooks.configure(allow="")
    with pytest.raises(outbox.WebhookError, match="loopback"):
        webhooks.check_url(HOOK.url)


def test_the_delivery_is_written_with_the_outcome_and_rolled_back_with_it(db_url: str, allow_loopback: None) -> None:
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, ok, webhook=HOOK)
        plain = outbox.enqueue(conn, ok)
        conn.commit()
        assert deliveries(conn, job) == []  # declared, not yet due
        # The outcome rolls back: so does its delivery.
        assert [r.status for r in outbox.testing.drain(conn, registry_=reg, jobs=[job])] == ["succeeded"]
        assert len(deliveries(conn, job)) == 1
        conn.rollback()
        assert deliveries(conn, job) == []
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE task = %s",
                            (webhooks.DELIVERY_TASK,)).fetchone() == (0,)
        # Committed: one delivery job, pending in the configured tier, its payload the job id only.
        outbox.testing.drain(conn, registry_=reg, jobs=[job, plain])
        conn.commit()
        # max_retries: the declared retries plus the allowance for attempts that find the breaker open.
        assert deliveries(conn, job) == [(webhooks.DELIVERY_TASK, "normal", [str(job)],
                                          webhooks.DELIVERY_MAX_RETRIES + webhooks.BREAKER_SKIPS_ALLOWED,
                                          "succeeded", True)]
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE task = %s",
                            (webhooks.DELIVERY_TASK,)).fetchone() == (1,), "a job without webhook sends none"


def test_every_final_outcome_announces_once(db_url: str, allow_loopback: None) -> None:
    with psycopg.connect(db_url) as conn:
        dead = outbox.enqueue(conn, no, webhook=HOOK)
        expired = outbox.enqueue(conn, ok, webhook=HOOK, expires=60.0)
        task_level = outbox.enqueue(conn, declared)
        overridden = outbox.enqueue(conn, declared, webhook=HOOK)
        again = outbox.enqueue(conn, ok, webhook=HOOK, idempotency_key="k1")
        same = outbox.enqueue(conn, ok, webhook=outbox.Webhook(url="http://127.0.0.1:9/other", secret="x"),
                              idempotency_key="k1")
        conn.commit()
        assert same == again
        outbox.testing.drain(conn, registry_=reg, jobs=[dead, task_level, overridden])
        # Expiry (as the relay records it) and an operator's discard of the dead letter.
        conn.execute("UPDATE outbox.jobs SET status = 'expired', finished_at = now() WHERE id = %s", (expired,))
        conn.commit()
        outbox.discard(conn, dead, by="test", reason="announced already as dead")
        conn.commit()
        outcomes = dict(conn.execute("SELECT job_id, outcome FROM outbox.webhooks").fetchall())
        assert outcomes == {dead: "dead", expired: "expired", task_level: "succeeded", overridden: "succeeded",
                            again: None}
        urls = dict(conn.execute("SELECT job_id, url FROM outbox.webhooks").fetchall())
        assert urls[task_level].endswith("/task-level") and urls[overridden] == HOOK.url
        assert urls[again] == HOOK.url, "an idempotency-key hit keeps the first job's declaration"
        assert conn.execute("SELECT count(*) FROM outbox.jobs WHERE task = %s",
                            (webhooks.DELIVERY_TASK,)).fetchone() == (4,), "dead then discarded: announced once"


def test_attempts_that_found_the_breaker_open_do_not_spend_the_retries(db_url: str, allow_loopback: None) -> None:
    """A breaker opened by other deliveries to the host must not use up this delivery's retries: only
    failed contacts count, read from the attempts the ledger recorded (its own failure path)."""
    from tierbox.webhooks import deliver, queries

    def breaker_open(*_: object, **__: object) -> None:
        raise deliver.HostCircuitOpenError("breaker webhook:127.0.0.1:9 is open: not contacted")

    failing = Registry()
    failing.add(msgspec.structs.replace(deliver.TASK, fn=breaker_open, takes_context=False, context_first=False))
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, ok, webhook=HOOK)
        # Two retries instead of ten, so the test is short (only the number is changed, before the outcome).
        conn.execute("UPDATE outbox.webhooks SET max_retries = 2 WHERE job_id = %s", (job,))
        outbox.testing.drain(conn, registry_=reg, jobs=[job])
        [(delivery,)] = conn.execute("SELECT delivery_job_id FROM outbox.webhooks WHERE job_id = %s", (job,)).fetchall()
        for _ in range(4):  # four attempts find the breaker open: more than the two retries declared
            [ran] = outbox.testing.drain(conn, registry_=failing, jobs=[delivery])
            assert ran.status == "retrying", ran
        [a] = run(conn, queries.ANNOUNCEMENT, {"job_id": job, "delivery_id": delivery})
        assert (a.max_retries, a.breaker_skips) == (2, 4)
        # Attempts 5, 6 and 7 reach the receiver and fail: the third failed contact is the last.
        deliver.give_up_if_spent(5, a, "503")
        deliver.give_up_if_spent(6, a, "503")
        with pytest.raises(outbox.Reject, match="gave up after 3 failed contacts \\(4 attempts found the breaker open\\)"):
            deliver.give_up_if_spent(7, a, "503")


def test_the_delivery_tier_is_configurable_and_an_unknown_one_is_refused(
        db_url: str, allow_loopback: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """``TIERBOX_WEBHOOK_TIER`` (``Settings.webhook_tier``), applied by ``configure(tier=...)`` as the
    entry points do; the ``allow_loopback`` fixture restores the policy afterwards."""
    monkeypatch.setenv("TIERBOX_WEBHOOK_TIER", "LOW")
    webhooks.configure(tier=outbox.Settings.from_env().webhook_tier)
    assert webhooks.policy().tier == "low"
    with psycopg.connect(db_url) as conn:
        job = outbox.enqueue(conn, ok, webhook=HOOK)
        conn.commit()
        outbox.testing.drain(conn, registry_=reg, jobs=[job])
        conn.commit()
        [(task, tier, pending_tier, weight, priority)] = conn.execute(
            "SELECT d.task, d.tier, p.tier, p.weight, p.priority FROM outbox.webhooks w "
            "JOIN outbox.jobs d ON d.id = w.delivery_job_id JOIN outbox.pending p ON p.job_id = d.id "
            "WHERE w.job_id = %s", (job,)).fetchall()
        low = DEFAULT_TOPOLOGY.spec("low")
        assert (task, tier, pending_tier, weight) == (webhooks.DELIVERY_TASK, "low", "low", low.weight)
        assert priority == low.weight, "a quorum tier without max_priority: the tier's weight"

        # A tier the topology does not have: refused at enqueue, naming the setting; nothing written.
        webhooks.configure(tier="nope")
        with pytest.raises(outbox.ConfigError, match="TIERBOX_WEBHOOK_TIER") as err:
            outbox.enqueue(conn, ok, webhook=HOOK)
        assert "'nope' is not a tier" in str(err.value) and "normal" in str(err.value)
        assert outbox.enqueue(conn, ok) is not None, "the transaction is still usable"
        conn.rollback()
        with pytest.raises(outbox.ConfigError, match="TIERBOX_WEBHOOK_TIER"):
            webhooks.configure(tier="")
        assert webhooks.policy().tier == "nope", "a refused configure changes nothing"
