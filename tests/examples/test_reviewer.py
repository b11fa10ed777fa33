"""``python -m examples.reviewer``: local mode without a broker, worker mode with one, the redacted final failure.

The example serves its API with uvicorn twice: first with no ``TIERBOX_AMQP_URL`` (jobs run in the API
process through ``outbox.testing.drain``), then with the broker, the relay and a worker. Asserted: who
ran the jobs, the dead letter after four attempts, the private note absent from the admin view (its
SHA-256 shown instead), and the replay of the dead job completing the process.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from outbox.config import Settings
from tests.examples.claims import claims
from tests.helpers import ROOT, settings_env

pytestmark = [pytest.mark.slow, pytest.mark.timeout(450)]


def test_the_reviewer_runs_locally_without_a_broker_and_redacts_its_final_failures(settings: Settings) -> None:
    env = settings_env(settings)
    env.pop("TIERBOX_APP")  # the example names its own task module
    done = subprocess.run([sys.executable, "-m", "examples.reviewer", "--labs", "2"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    table = claims(done.stdout)
    assert len(table) == 5 and all(held for held, _ in table.values()), out
    local = table["local development keeps working with no broker (in-process mode)"][1]
    assert "2/2 labs completed" in local and "['outbox.testing']" in local, out
    assert "2/2 labs completed" in table["production moves the work to a separate worker, same API contract"][1]
    failure = table["a final failure is dead-lettered after the retries and marks the process failed"][1]
    assert "process failed after 4 attempts" in failure, out
    redacted = table["the user's context is redacted in the dead-letter view"][1]
    assert "private note in the response: False" in redacted and "SHA-256 matches: True" in redacted, out
    assert "PRIVATE NOTE" not in done.stdout  # nor in what the example printed
