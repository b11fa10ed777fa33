"""Bad deliveries and bad operator input, one test per row of docs/bad_input.md that had none."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid

import msgspec
import psycopg
import pytest

import outbox
from outbox._encoding import encode_envelope
from outbox.config import Settings
from tests.factories import dead_job
from tests.helpers import ROOT, settings_env
from tests.system import System
from tierbox.relay.relay import build_message

pytestmark = pytest.mark.slow


async def test_envelope_naming_no_job_is_dead_lettered_unknown_job(system: System) -> None:
    system.relay()
    system.worker()
    ghost = uuid.uuid4()
    await system.publish_raw("high", encode_envelope(ghost, "sample.effect", "high", b'{"args":[],"kwargs":{}}', None))
    system.wait(lambda: system.q("SELECT reason, task FROM outbox.dead_letters WHERE job_id = %s", ghost)
                == [("unknown_job", "sample.effect")], what="unknown_job dead letter")


async def test_missing_headers_wrong_content_type_odd_tier_and_priority_still_run_from_the_ledger(
        system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.effect", "odd")
    system.wait_status(job, "succeeded")  # first delivery through the relay, normal
    with psycopg.connect(system.settings.database_url, autocommit=True) as conn:
        other = outbox.enqueue(conn, "sample.effect", args=["raw"])
        conn.execute("DELETE FROM outbox.pending WHERE job_id = %s", (other,))  # only our raw copy exists
    body = encode_envelope(other, "sample.effect", "no-such-tier", b'{"args":["raw"],"kwargs":{}}', None)
    await system.publish_raw("high", body, content_type="text/plain", priority=250)  # no headers at all
    system.wait_status(other, "succeeded")
    assert system.effects(other) == [(1, "raw")]


def test_arguments_that_do_not_fit_the_handler_are_retried_then_dead(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.flaky", kwargs={"no_such_parameter": 1})
    system.wait_status(job, "dead")
    dl = system.dead_letter(job)
    assert dl["reason"] == "failed" and dl["error_type"] == "TypeError"
    assert system.outcomes(job) == ["failed", "failed", "failed"]


async def test_job_expired_before_it_started_is_not_run(system: System) -> None:
    job = system.enqueue("sample.effect", "late", expires=0.5)
    with psycopg.connect(system.settings.database_url, autocommit=True) as conn:
        # Published before its expiry (the row leaves pending as a relay's would) ...
        conn.execute("DELETE FROM outbox.pending WHERE job_id = %s", (job,))
        conn.execute("UPDATE outbox.jobs SET status = 'published', published_at = now() WHERE id = %s", (job,))
    row = system.q("SELECT task, tier, priority, payload::text, headers::text, attempts, enqueued_at "
                   "FROM outbox.jobs WHERE id = %s", job)[0]
    await asyncio.sleep(0.6)
    system.worker()
    # ... and delivered after it.
    await system.publish_raw("high", build_message(job, *row).body)
    system.wait_status(job, "expired")
    assert system.runs(job) == 0
    assert system.q("SELECT last_error FROM outbox.jobs WHERE id = %s", job) == [("expired before it started",)]


def test_discarding_twice_and_redriving_to_an_unknown_tier_are_refused(tx: psycopg.Connection) -> None:
    first, second = dead_job(tx), dead_job(tx)
    outbox.discard(tx, first)
    with pytest.raises(outbox.RedriveError, match="already discarded"):
        outbox.discard(tx, first)
    with pytest.raises(outbox.RedriveError, match=r"not in outbox\.tiers"):
        outbox.redrive(tx, second, tier="no-such-tier")
    assert outbox.redrive(tx, second)  # the refusals left the transaction and the dead letter usable


@pytest.mark.parametrize(("args", "expected"), [
    (["--pool", "nope"], "--pool: 'nope' is not a pool"),
    (["--queues", "critical,nope"], "--queues: unknown tier(s) ['nope']"),
    (["--pool", "urgent", "--app", "no_such_module_xyz"], "cannot import no_such_module_xyz"),
])
def test_worker_cli_refuses_bad_pools_in_one_line(settings: Settings, args: list[str], expected: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "tierbox.cli", "worker", *args], env=settings_env(settings), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0] and "Traceback" not in proc.stderr


def test_negative_durations_name_their_variable() -> None:
    for name in ("TIERBOX_RELAY_RETRY_DELAY_S", "TIERBOX_SHUTDOWN_GRACE_S"):
        with pytest.raises(outbox.ConfigError, match=name):
            Settings.from_env({name: "-1"})


def test_topology_entry_missing_a_field_names_the_file(tmp_path) -> None:
    path = tmp_path / "topology.json"
    path.write_bytes(msgspec.json.encode({"tiers": {"archive": {"weight": 1, "queue_type": "quorum"}}}))
    with pytest.raises(outbox.ConfigError, match="TIERBOX_TOPOLOGY_FILE"):
        _ = Settings(topology_file=str(path)).topology
