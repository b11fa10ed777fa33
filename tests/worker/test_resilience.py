"""Leases longer than jobs (connections cut by the broker: tests/broker/test_connections_cut.py)."""

from __future__ import annotations

import pytest

from tests.system import System

pytestmark = pytest.mark.slow


def test_lease_is_renewed_while_a_job_outlives_it(system: System) -> None:
    system.relay()
    system.worker()
    job = system.enqueue("sample.sleep", 5.0)  # lease_s is 2 s in tests
    system.wait_status(job, "succeeded", timeout=30)
    assert system.outcomes(job) == ["succeeded"]
    assert system.runs(job) == 1
