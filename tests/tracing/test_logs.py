"""JSON log lines (TIERBOX_LOG_FORMAT=json): one object per line, the event's fields, the current span's ids."""

from __future__ import annotations

import io
import json
import logging

import pytest

from outbox._logs import JsonFormatter, event, log_format
from outbox.config import Settings
from outbox.errors import ConfigError


def _lines(emit: object) -> list[dict[str, object]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("tierbox.test_json")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        emit(logger)  # type: ignore[operator]
    finally:
        logger.removeHandler(handler)
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_an_event_is_one_json_object_with_its_fields() -> None:
    job_id = "0b6f3c1e-1111-4222-8333-444455556666"
    [line] = _lines(lambda lg: event(lg, "worker.retry_scheduled", job_id=job_id, attempt=1, delay_s=0.25,
                                     error="boom\nsecond line", time="clash", ok=True))
    assert line["action"] == "worker.retry_scheduled" and line["level"] == "INFO"
    assert line["logger"] == "tierbox.test_json" and str(line["time"]).endswith("+00:00")
    assert (line["job_id"], line["attempt"], line["delay_s"], line["ok"]) == (job_id, 1, 0.25, True)
    assert line["error"] == "boom\\nsecond line"  # clipped to one line, as in the text form
    assert line["field_time"] == "clash"  # a field never replaces a fixed key
    assert "trace_id" not in line  # no span current (no tracer provider in the test process)


def test_a_long_field_is_clipped_and_a_plain_line_keeps_its_message() -> None:
    [ev, plain] = _lines(lambda lg: (event(lg, "relay.publish_failed", error="x" * 5000),
                                     lg.warning("not an event %s", 42)))
    assert len(str(ev["error"])) == 300 and str(ev["error"]).endswith("...")
    assert plain["message"] == "not an event 42" and "action" not in plain


def test_the_format_setting_is_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert log_format("JSON") == "json" and log_format(None) in ("text", "json")
    monkeypatch.setenv("TIERBOX_LOG_FORMAT", "xml")
    with pytest.raises(ConfigError) as err:
        log_format()
    assert "TIERBOX_LOG_FORMAT" in str(err.value)
    with pytest.raises(ConfigError) as err:
        Settings(log_format="xml")
    assert "TIERBOX_LOG_FORMAT" in str(err.value)
