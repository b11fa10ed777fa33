"""The ``broker_dead_letter`` rule on the groups the DLQ sweeper makes (``workers/dlq_sweeper.py``: error type
``BrokerDeadLettered``, the x-death reason as the dead letter's reason). test_group_redrive_system.py makes one
through RabbitMQ for real; these cover every reason and the cases the rule must leave to others."""

from __future__ import annotations

import datetime as dt

import pytest

from tierbox.ops import triage
from tierbox.workers.dlq_sweeper import X_DEATH_REASONS, death_reason

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
NO_EVIDENCE = triage.Evidence(jobs_retried=0, jobs_same_every_attempt=0, breaker_opens=0)


def group(error_type: str, reasons: list[str], message: str = "m") -> triage.Group:
    return triage.Group(fingerprint="f", error_type=error_type, message=message, sample_message=message, frames=[],
                        tasks=["t"], tiers=["high"], outcomes=[], reasons=reasons, failed_attempts=0,
                        dead_letters=1, open_dead_letters=1, first_seen=NOW, last_seen=NOW, sample_job_ids=[],
                        status="open", resolved_at=None, regressed_at=None)


@pytest.mark.parametrize(("x_death", "action"), [
    ("maxlen", "length limit"), ("expired", "TTL"), ("delivery_limit", "without an ack"), ("rejected", "consumer"),
])
def test_every_x_death_reason_the_sweeper_records(x_death: str, action: str) -> None:
    reason, description = death_reason({"x-first-death-reason": x_death.encode(), "x-first-death-queue": b"t.high"})
    verdict = triage.classify(group("BrokerDeadLettered", [reason], description), NO_EVIDENCE)
    assert (verdict.cause, verdict.rule) == ("broker dead letter", "broker_dead_letter")
    assert action in verdict.action and f"x-death reason {reason}" in verdict.evidence
    assert set(X_DEATH_REASONS.values()) == {"maxlen", "expired", "delivery_limit", "rejected"}


def test_the_most_telling_reason_decides() -> None:
    verdict = triage.classify(group("BrokerDeadLettered", ["expired", "delivery_limit"]), NO_EVIDENCE)
    assert "without an ack" in verdict.action and "delivery_limit, expired" in verdict.evidence


def test_rejected_alone_is_the_brokers_only_when_the_sweeper_says_so() -> None:
    # 'rejected' with another error type is not a broker dead letter; a poison message stays poison.
    assert triage.classify(group("ValueError", ["rejected"]), NO_EVIDENCE).rule != "broker_dead_letter"
    assert triage.classify(group("BrokerDeadLettered", ["undecodable"]), NO_EVIDENCE).rule == "poison_message"
    assert triage.classify(group("RuntimeError", ["maxlen"]), NO_EVIDENCE).rule == "broker_dead_letter"
