"""``tierbox tiers`` through the real CLI process: the JSON form carries the same report as the table,
tiers and breakers, and names a Redis outage instead of leaving the breakers out."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from outbox.config import Settings
from outbox.registry import Task
from tests.api.test_api import dead
from tierbox.flow.gate import Gate, connect

DEAD_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens on port 1


def _noop(**kwargs: Any) -> None:
    return None


@pytest.fixture
def prefix(service_urls: dict[str, str]) -> Iterator[str]:
    """A queue prefix of this test's own, so its breaker keys in Redis are its own; deleted afterwards."""
    value = f"clitiers{uuid.uuid4().hex[:8]}."
    yield value
    client = redis.Redis.from_url(service_urls["redis"])
    for key in client.scan_iter(match=f"tierbox:{value}*"):
        client.delete(key)
    client.close()


def open_breaker(redis_url: str, prefix: str, name: str) -> None:
    """Trip ``name`` the way workers do: five failures within the window."""
    async def trip() -> None:
        settings = Settings(redis_url=redis_url, queue_prefix=prefix)
        gate = Gate(settings, connect(settings), None)
        task = Task(name="charge", fn=_noop, tier="normal", breaker=name)
        try:
            for _ in range(5):
                await gate.record(task, ok=False)
        finally:
            await gate.redis.aclose()
    asyncio.run(trip())


def tierbox(db_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m tierbox.cli tiers ...`` as a separate process."""
    return subprocess.run([sys.executable, "-m", "tierbox.cli", "tiers", *args, "--database-url", db_url],
                          capture_output=True, text=True, timeout=60, check=False, env={**os.environ, **env})


def test_json_carries_the_tiers_and_the_breakers(db_url: str, prefix: str, service_urls: dict[str, str]) -> None:
    dead(db_url)
    open_breaker(service_urls["redis"], prefix, "stripe")
    env = {"TIERBOX_QUEUE_PREFIX": prefix, "TIERBOX_REDIS_URL": service_urls["redis"]}
    out = tierbox(db_url, "--json", **env)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # one document: nothing else on stdout
    assert set(report) == {"tiers", "breakers"}
    assert [r["tier"] for r in report["tiers"]][:2] == ["critical", "calls"]
    assert next(r for r in report["tiers"] if r["tier"] == "normal")["dead_5m"] == 1
    assert report["breakers"]["error"] is None
    assert report["breakers"]["states"]["stripe"]["state"] == "open"
    assert report["breakers"]["states"]["stripe"]["failures"] == 5
    table = tierbox(db_url, **env)  # the plain form prints the same breaker
    assert table.returncode == 0, table.stderr
    assert "stripe" in table.stdout and "open" in table.stdout.split("stripe", 1)[1].splitlines()[0]


def test_json_without_breakers_is_an_empty_map(db_url: str, prefix: str, service_urls: dict[str, str]) -> None:
    out = tierbox(db_url, "--json", TIERBOX_QUEUE_PREFIX=prefix, TIERBOX_REDIS_URL=service_urls["redis"])
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["breakers"] == {"states": {}, "error": None}


def test_json_names_a_redis_outage(db_url: str, prefix: str) -> None:
    out = tierbox(db_url, "--json", TIERBOX_QUEUE_PREFIX=prefix, TIERBOX_REDIS_URL=DEAD_REDIS_URL)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["tiers"] and report["breakers"]["states"] is None  # null, never {} ("no breaker tripped")
    assert report["breakers"]["error"].startswith("Redis unreachable")
    plain = tierbox(db_url, TIERBOX_QUEUE_PREFIX=prefix, TIERBOX_REDIS_URL=DEAD_REDIS_URL)
    assert plain.returncode == 0 and "breakers: Redis unreachable" in plain.stderr
