"""``python -m examples.idempotent_api --size small``: the production queue's outcomes on the real processes.

The example serves its API and the flaky downstream with uvicorn, runs the relay and two workers, and
drives the API with an httpx load generator: first the API alone (no relay or worker running), then
the whole system while it SIGKILLs workers and takes the downstream down. Asserted exactly: nothing
lost, every replayed key answered with its first job, no job succeeded twice, every refused document
dead-lettered, listed and redriven over HTTP, the breaker opened and let through no more requests
during the outage than its policy allows. The API latency (both rows) only against a generous bound:
this 2-core box is shared.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from outbox.config import Settings
from tests.examples.claims import claims, number
from tests.helpers import ROOT, settings_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(450)]


def test_the_production_queue_loses_nothing_and_eliminates_every_duplicate(settings: Settings) -> None:
    env = settings_env(settings)
    env.pop("TIERBOX_APP")  # the example names its own task module
    done = subprocess.run([sys.executable, "-m", "examples.idempotent_api", "--jobs", "200"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    table = claims(done.stdout)
    assert len(table) == 6, out
    loss = table["zero message loss across 200 jobs, workers SIGKILLed during the run"]
    assert loss[0] and "lost 0;" in loss[1] and "3 SIGKILLs" in loss[1], out
    dupes = table["100 % duplicate elimination replaying the keys across worker crashes"]
    assert dupes[0] and "replay: 200/200 answered duplicate" in dupes[1] and "jobs succeeded twice 0" in dupes[1], out
    assert "downstream applied 200 documents" in dupes[1], out  # each document's effect exactly once
    dlq = table["the DLQ caught every failure that would have been silent"]
    assert dlq[0] and "2 of 2 refused documents" in dlq[1] and "2 redriven" in dlq[1], out
    breaker_held, breaker = table["a Redis breaker shared by every worker stops hammering a sick downstream"]
    assert breaker_held, out
    # Held means bounded: the requests that reached the downstream while it was down are counted by
    # the downstream itself, and must not exceed what the breaker's policy lets through.
    during = number(r"(\d+) requests reached the downstream while it was down", breaker)
    bound = number(r"at most (\d+):", breaker)
    assert 0 < during <= bound, out
    # threshold 10 + 8 unacked deliveries (4 slots + 4 prefetch) per worker process alive during the
    # outage (2, one more for each SIGKILL whose replacement overlapped it) + 1 probe x 2 half-opens
    assert bound in (28, 36, 44), out
    alone = table["API p99 < 50 ms under concurrent load: the API alone"][1]
    assert "over 200 POST /jobs" in alone and "no relay or worker running" in alone, out
    assert "its jobs then ran: 200 succeeded, lost 0" in alone, out  # the phase leaves nothing behind
    assert number(r"p99 ([\d.]+) ms", alone) < 10_000, out  # the claim is 50 ms; see the README's figures
    latency = table["API p99 < 50 ms under concurrent load: the whole system running"][1]
    assert number(r"p99 ([\d.]+) ms", latency) < 10_000, out
    assert "over 400 POST /jobs" in latency, out  # the run proper's 200 requests and their replay
