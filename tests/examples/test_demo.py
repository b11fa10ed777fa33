"""``make demo`` runs as the README says: relay and four pools as real processes, every job as expected."""

from __future__ import annotations

import subprocess
import sys

import pytest

from outbox.config import Settings
from tests.helpers import ROOT, settings_env

pytestmark = pytest.mark.slow


def test_the_demo_runs_every_tier_a_retry_a_redrive_and_a_rollback(settings: Settings) -> None:
    env = settings_env(settings)
    env.pop("TIERBOX_APP")  # the demo names its own task module
    done = subprocess.run([sys.executable, "-m", "examples.demo"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = {line.split("  ")[0].strip(): line.split() for line in lines if line[:1].isalpha()}
    for job in ("otp", "webhook", "invoice", "calendar", "export", "call summary"):
        assert "succeeded" in rows[job], done.stdout
    assert "flaky provider" in rows and rows["flaky provider"][-3:-1] == ["succeeded", "3"], done.stdout
    assert "dead" in rows["needs fix"] and "succeeded" in rows["needs fix, redriven"], done.stdout
    assert "never existed" in " ".join(rows["rolled back otp"]), done.stdout
    assert "idempotency key gave one job: True; rolled-back job exists: False" in done.stdout
