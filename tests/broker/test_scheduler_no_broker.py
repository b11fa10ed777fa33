"""The scheduler never talks to RabbitMQ: it enqueues through Postgres (leader lock in Redis), so a
broker fault cannot reach it. Shown with no broker at all."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from tests.helpers import free_port
from tests.scheduler.test_scheduler import app_settings, jobs, lock_prefix  # noqa: F401 - lock_prefix: a fixture
from tests.system import System

pytestmark = pytest.mark.slow


def test_scheduler_enqueues_its_runs_with_no_broker_listening(system: System, tmp_path: Path,
                                                              lock_prefix: str) -> None:  # noqa: F811
    settings, env = app_settings(system.settings, tmp_path)
    settings = msgspec.structs.replace(settings, amqp_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/")
    scheduler = system.start("scheduler", env=env, settings=settings)
    system.wait(lambda: len(jobs(settings)) >= 3, timeout=30, what="three runs enqueued without a broker")
    assert scheduler.alive()
    assert "amqp" not in scheduler.output().lower()  # nothing tried to reach it
