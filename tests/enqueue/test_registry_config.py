"""Task definitions, settings and argument encodings: the rows of docs/bad_input.md about them."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re
import uuid
from pathlib import Path

import pytest

import outbox
from outbox._encoding import decode_payload, encode_payload
from outbox.config import Settings
from outbox.registry import Registry


@pytest.mark.parametrize(("policy", "message"), [
    ({"max_retries": -1}, "max_retries must be >= 0"),
    ({"retry_backoff_s": -1.0}, "retry_backoff_s"),
    ({"retry_backoff_s": 5.0, "retry_backoff_max_s": 1.0}, "retry_backoff_s"),
    ({"timeout_s": 0}, "timeout_s must be > 0"),
    ({"priority": 256}, "priority must be within 0..255"),
])
def test_bad_task_policy_is_refused_at_import(policy: dict, message: str) -> None:
    with pytest.raises(outbox.RegistryError, match=message):
        outbox.task(lambda: None, tier="high", name="t.bad", registry_=Registry(), **policy)


def test_unknown_tier_registers_but_check_reports_it_and_enqueue_refuses(tx) -> None:
    reg = Registry()
    task = outbox.task(lambda: None, tier="nope", name="t.nope", registry_=reg)
    assert "task 't.nope': tier 'nope' is not in the topology" in reg.problems(Settings().topology)
    with pytest.raises(outbox.UnknownTierError):
        outbox.enqueue(tx, task)


@pytest.mark.parametrize(("env", "variable"), [
    ({"TIERBOX_REAPER_INTERVAL_S": "60", "TIERBOX_LEASE_S": "30"}, "TIERBOX_REAPER_INTERVAL_S"),
    ({"TIERBOX_LEASE_S": "0"}, "TIERBOX_LEASE_S"),
    ({"TIERBOX_RELAY_BATCH_SIZE": "0"}, "TIERBOX_RELAY_BATCH_SIZE"),
    ({"TIERBOX_AMQP_URL": "http://x"}, "TIERBOX_AMQP_URL"),
])
def test_bad_settings_name_their_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(outbox.ConfigError, match=variable):
        Settings.from_env(env)


def test_missing_topology_file_names_the_variable() -> None:
    with pytest.raises(outbox.ConfigError, match="TIERBOX_TOPOLOGY_FILE"):
        _ = Settings(topology_file="/nonexistent/topology.json").topology


def test_json_forms_of_rich_arguments() -> None:
    when = dt.datetime(2026, 11, 24, 3, 0, tzinfo=dt.UTC)
    ident = uuid.UUID(int=7)
    text = encode_payload([when, ident, decimal.Decimal("1.10"), b"\x00\x01", (1, 2), {3}], {}, 10_000)
    assert decode_payload(text.encode()).args == ["2026-11-24T03:00:00Z", str(ident), "1.10", "AAE=", [1, 2], [3]]


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_floats_are_refused(value: float) -> None:
    with pytest.raises(outbox.PayloadEncodeError, match="NaN and infinite"):
        encode_payload([], {"x": [value]}, 10_000)


@pytest.mark.parametrize(("pool", "message"), [
    ({"tiers": ["critical", "high"], "reserved": {"bulk": 1}}, "reserved for 'bulk' must name its tier"),
    ({"tiers": ["critical", "high"], "reserved": {"critical": -1}}, "reserved for 'critical' must name its tier, >= 0"),
])
def test_bad_reserved_slots_are_refused_with_the_pool_named(tmp_path: Path, pool: dict[str, object],
                                                           message: str) -> None:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"pools": {"urgent": pool}}))
    with pytest.raises(outbox.ConfigError, match=f"pool 'urgent': {message}"):
        _ = Settings(topology_file=str(path)).topology


@pytest.mark.parametrize("name", ["eu:critical", "crit*", "two words", "", "x" * 65])
def test_a_tier_name_that_would_collide_in_redis_keys_is_refused(tmp_path: Path, name: str) -> None:
    # ':' separates the parts of the pools' in-flight keys and '*' is a SCAN glob: "eu:critical" would
    # read as tier "eu" of worker "critical:..." (tierbox.workers.inflight).
    path = tmp_path / "topology.json"
    path.write_text(json.dumps({"tiers": {name: {"weight": 1, "slo_s": None, "queue_type": "quorum",
                                                 "pool": "deferred"}}}))
    with pytest.raises(outbox.ConfigError, match=re.escape(f"tier {name!r}: a name is 1-64 letters")):
        _ = Settings(topology_file=str(path)).topology


def test_default_urgent_pool_reserves_two_critical_slots_beyond_its_concurrency() -> None:
    spec = Settings().topology.pools["urgent"]
    assert spec.reserved == {"critical": 2}
    assert spec.slots == spec.concurrency + 2


def test_declared_breaker_policy_is_validated_and_reaches_the_pool_gate(settings: Settings) -> None:
    from outbox.registry import Registry
    from outbox.tiers import PoolSpec
    from tierbox.workers.pool import Pool

    reg = Registry()
    policy = outbox.breaker("stripe", threshold=2, window_s=60, open_s=120, probes=2, registry_=reg)
    assert outbox.breaker("stripe", threshold=2, window_s=60, open_s=120, probes=2, registry_=reg) == policy
    with pytest.raises(outbox.RegistryError, match="breaker 'stripe' is already declared"):
        outbox.breaker("stripe", threshold=3, registry_=reg)
    with pytest.raises(outbox.RegistryError, match="breaker threshold must be an integer >= 1"):
        outbox.breaker("other", threshold=0, registry_=reg)
    with pytest.raises(outbox.RegistryError, match="breaker open_s must be a positive number"):
        outbox.breaker("other", open_s=-1, registry_=reg)
    pool = Pool(settings, "urgent", PoolSpec(tiers=("critical",)), reg)
    assert pool.admission.gate.policy("stripe") == policy
    assert pool.admission.gate.policy("undeclared").threshold == 5  # the documented default
