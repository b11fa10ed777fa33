"""A broker that blocks publishers (a memory alarm, on the private node): the relay holds, then resumes;
``tier_health.publishing_blocked`` and the admin API's ``tierbox_publishing_blocked`` show the block meanwhile."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests.api.test_api import READ, make_client
from tests.broker.conftest import PrivateBroker
from tests.helpers import Proc, free_port, scrape, wait_until

pytestmark = pytest.mark.slow

#: A watermark no node can stay under: the alarm fires at once. RabbitMQ's default is 0.4.
ALARM_WATERMARK = "0.0000001"
DEFAULT_WATERMARK = "0.4"


def gauge(port: int) -> str | None:
    text = scrape(port) or ""
    return next((line for line in text.splitlines() if line.startswith("tierbox_relay_blocked ")), None)


def publishing_blocked(settings: Settings) -> list[bool]:
    """``tier_health.publishing_blocked`` of every tier (one value each)."""
    with psycopg.connect(settings.database_url) as conn:
        return [bool(r[0]) for r in conn.execute("SELECT publishing_blocked FROM outbox.tier_health ORDER BY tier")]


def api_gauge(settings: Settings) -> str | None:
    """The ``tierbox_publishing_blocked`` line of the admin API's ``/metrics`` (the Litestar app in-process)."""
    with make_client(settings.database_url, settings.queue_prefix) as client:
        response: Any = client.get("/metrics", headers=READ)
    assert response.status_code == 200, response.text
    return next((line for line in response.text.splitlines() if line.startswith("tierbox_publishing_blocked ")), None)


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime, stime in clock ticks (USER_HZ = 100)


def pending(settings: Settings) -> tuple[int, int]:
    """(pending rows, most publish attempts of any)."""
    with psycopg.connect(settings.database_url) as conn:
        row = conn.execute("SELECT count(*), coalesce(max(publish_attempts), 0) FROM outbox.pending").fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def test_relay_holds_its_rows_while_the_broker_blocks_it_and_resumes_after(
        private_settings: Settings, private_broker: PrivateBroker, procs: list[Proc], tmp_path: Path) -> None:
    settings = msgspec.structs.replace(private_settings, relay_confirm_timeout_s=2.0, reconcile_interval_s=0.0)
    port = free_port()
    relay = Proc(["relay", "--metrics-port", str(port)], settings, tmp_path / "relay.log")
    procs.append(relay)
    wait_until(lambda: "relay.connected" in relay.output(), timeout=20, what="relay connected")
    assert gauge(port) == "tierbox_relay_blocked 0.0"
    tiers = len(publishing_blocked(settings))
    assert tiers > 1 and publishing_blocked(settings) == [False] * tiers
    assert api_gauge(settings) == "tierbox_publishing_blocked 0.0"
    private_broker.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK)
    try:
        with psycopg.connect(settings.database_url) as conn:  # enqueue commits while the broker is blocked
            jobs = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[i]) for i in range(10)])
        wait_until(lambda: "relay.blocked" in relay.output(), timeout=20, what=f"relay.blocked:\n{relay.output()}")
        assert gauge(port) == "tierbox_relay_blocked 1.0"
        # The relay's row of outbox.relay_blocks (written just after it logs relay.blocked) reaches every
        # reader of tier_health, whichever process it is: every tier says so, and so does the API.
        wait_until(lambda: publishing_blocked(settings) == [True] * tiers, timeout=10, what="tier_health blocked")
        assert api_gauge(settings) == "tierbox_publishing_blocked 1.0"
        rows, attempts = pending(settings)
        cpu = cpu_s(relay.pid)
        time.sleep(4)  # two confirm timeouts' worth: a relay that kept claiming would show it here
        assert pending(settings) == (rows, attempts) == (10, attempts)
        assert attempts <= 1, "at most the batch in flight when the block came timed out"
        assert cpu_s(relay.pid) - cpu < 0.4, "no busy loop while blocked"
    finally:
        private_broker.ctl("set_vm_memory_high_watermark", DEFAULT_WATERMARK)
    wait_until(lambda: pending(settings)[0] == 0, timeout=30, what=f"rows published:\n{relay.output()}")
    assert "relay.unblocked" in relay.output()
    assert gauge(port) == "tierbox_relay_blocked 0.0"
    wait_until(lambda: publishing_blocked(settings) == [False] * tiers, timeout=10, what="tier_health unblocked")
    assert api_gauge(settings) == "tierbox_publishing_blocked 0.0"
    with psycopg.connect(settings.database_url) as conn:
        statuses = conn.execute("SELECT DISTINCT status FROM outbox.jobs WHERE id = ANY(%s)", (jobs,)).fetchall()
    assert statuses == [("published",)]
    assert relay.alive()


def test_a_stale_block_row_does_not_count(settings: Settings) -> None:
    """A relay killed while blocked leaves its row; once not refreshed for 30 s, tier_health ignores it."""
    with psycopg.connect(settings.database_url) as conn:
        conn.execute("INSERT INTO outbox.relay_blocks (relay_id, lane, since, seen_at) "
                     "VALUES ('gone:1', 'main', now() - interval '2 hours', now() - interval '1 hour')")
    tiers = len(publishing_blocked(settings))
    assert publishing_blocked(settings) == [False] * tiers
    assert api_gauge(settings) == "tierbox_publishing_blocked 0.0"
    with psycopg.connect(settings.database_url) as conn:  # the same row, refreshed: it counts again
        conn.execute("UPDATE outbox.relay_blocks SET seen_at = now() - interval '5 seconds'")
    assert publishing_blocked(settings) == [True] * tiers
    assert api_gauge(settings) == "tierbox_publishing_blocked 1.0"
