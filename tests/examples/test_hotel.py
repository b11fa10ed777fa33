"""``python -m examples.hotel --size small``: the hotel platform's claims hold on the real processes.

Where a RabbitMQ node of its own can be started (root and ``rabbitmq-server``), the example starts
one and restarts it mid-run; elsewhere it runs ``--no-restart`` on the shared broker, where the
restart row reads ``not run`` and a row of its own checks that nothing was lost. Either way it runs
the relay, the four pools and the scheduler, on this test's database and queue prefix. Behaviour is
asserted exactly (nothing lost, the dead letter redriven into HIGH, the override and the lanes
honoured); the OTP latency only against a generous bound, since this box is shared.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from outbox.config import Settings
from tests import rabbit_node
from tests.examples.claims import claims, number
from tests.helpers import ROOT, settings_env

# At a load average of 16-20 on this 2-core box a small run with the restart took 5 min 15 s
# (the private node's stop_app/start_app alone 50 s): 400 s was not enough there.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(780)]

RESTART = "a RabbitMQ restart loses nothing"
NO_RESTART = "nothing committed is lost or run twice (no restart)"


def test_the_hotel_platform_keeps_otps_fast_loses_nothing_and_redrives_into_another_tier(settings: Settings) -> None:
    restart = rabbit_node.unavailable() is None  # else --no-restart: no root or rabbitmq-server needed
    env = settings_env(settings)
    env.pop("TIERBOX_APP")  # the example names its own task module
    argv = [sys.executable, "-m", "examples.hotel", "--size", "small", *([] if restart else ["--no-restart"])]
    done = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=720)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    table = claims(done.stdout)
    assert len(table) == (8 if restart else 9), out
    for claim, (held, measured) in list(table.items())[1:]:
        if claim == RESTART and not restart:
            assert held is None and measured.startswith("--no-restart"), out
            continue
        assert held, f"{claim}: {measured}\n{out}"
    otp = table["OTP e-mail starts < 5 s after commit, whatever the other tiers' depth"][1]
    assert number(r"p99 (\d+) ms", otp) < 30_000, out  # the claim is 5 s; a loaded 2-core box gets 6x
    assert number(r"over (\d+) OTPs", otp) == 60, out
    kept = table[RESTART if restart else NO_RESTART][1]
    assert "lost 0," in kept and "run twice 0" in kept, out
    if restart:
        assert number(r"([\d,]+) BULK jobs waiting at the restart", kept) > 0, out  # the restart hit a backlog
    assert "new job in high, succeeded" in table["... and is redriven into any tier with one call"][1]
