"""The admin API's broker probe reconnects by itself (issue #22: /readyz stayed 503 until a restart)."""

from __future__ import annotations

from pathlib import Path

import pytest

from outbox.config import Settings
from tests.api.test_api_http import start_api
from tests.broker.conftest import PrivateBroker
from tests.broker.helpers import broker_errors, broker_up, readyz
from tests.helpers import Proc, wait_until

pytestmark = pytest.mark.slow


def test_api_answers_ready_right_after_the_broker_closed_its_connection(
        private_settings: Settings, private_broker: PrivateBroker, procs: list[Proc], tmp_path: Path) -> None:
    base = start_api(private_settings, procs, tmp_path)
    assert readyz(base)[0] == 200
    assert broker_up(base) == "tierbox_broker_up 1.0"
    private_broker.ctl("close_all_connections", "tierbox api probe test")
    # The very next request after the broker is back (it never left) answers 200, and so on.
    status, body = readyz(base)
    assert (status, body["status"], body.get("rabbitmq")) == (200, "ok", None)
    assert broker_up(base) == "tierbox_broker_up 1.0"
    assert broker_errors(base) and not any(broker_errors(base))


def test_api_recovers_from_a_broker_reset(private_settings: Settings, private_broker: PrivateBroker,
                                          procs: list[Proc], tmp_path: Path) -> None:
    base = start_api(private_settings, procs, tmp_path)
    assert readyz(base)[0] == 200
    private_broker.reset()
    wait_until(lambda: readyz(base)[0] == 200, timeout=20, what="/readyz 200 after the reset")
    assert broker_up(base) == "tierbox_broker_up 1.0"
    assert broker_errors(base) and not any(broker_errors(base))
