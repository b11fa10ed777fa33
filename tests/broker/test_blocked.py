"""A broker that blocks publishers (a memory alarm, on the private node): the relay holds, then resumes."""

from __future__ import annotations

import time
from pathlib import Path

import msgspec
import psycopg
import pytest

import outbox
from outbox.config import Settings
from tests.broker.conftest import PrivateBroker
from tests.helpers import Proc, free_port, scrape, wait_until

pytestmark = pytest.mark.slow

#: A watermark no node can stay under: the alarm fires at once. RabbitMQ's default is 0.4.
ALARM_WATERMARK = "0.0000001"
DEFAULT_WATERMARK = "0.4"


def gauge(port: int) -> str | None:
    text = scrape(port) or ""
    return next((line for line in text.splitlines() if line.startswith("tierbox_relay_blocked ")), None)


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
    private_broker.ctl("set_vm_memory_high_watermark", ALARM_WATERMARK)
    try:
        with psycopg.connect(settings.database_url) as conn:  # enqueue commits while the broker is blocked
            jobs = outbox.enqueue_many(conn, [outbox.job("sample.invoice", args=[i]) for i in range(10)])
        wait_until(lambda: "relay.blocked" in relay.output(), timeout=20, what=f"relay.blocked:\n{relay.output()}")
        assert gauge(port) == "tierbox_relay_blocked 1.0"
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
    with psycopg.connect(settings.database_url) as conn:
        statuses = conn.execute("SELECT DISTINCT status FROM outbox.jobs WHERE id = ANY(%s)", (jobs,)).fetchall()
    assert statuses == [("published",)]
    assert relay.alive()
