"""Structured log lines: every line carries an ``action`` and, where there is one, the job id.

Lines look like ``action=relay.batch_published tier=critical count=12``; with
``TIERBOX_LOG_FORMAT=json`` each is one JSON object (time, level, logger, action, the
fields, and ``trace_id``/``span_id`` while a span is current), for log pipelines.
Payloads are never logged; :func:`clip` bounds any free text (error messages).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from typing import Any

import msgspec

from outbox import _tracing as tracing
from outbox.errors import ConfigError

MAX_FIELD_CHARS = 300
#: The environment variable naming the log format, and the formats it may name.
LOG_FORMAT_ENV = "TIERBOX_LOG_FORMAT"
LOG_FORMATS = ("text", "json")
#: Keys of a JSON line that an event's fields never replace (a clashing field gets a ``field_`` prefix).
_FIXED_KEYS = frozenset({"time", "level", "logger", "action", "message", "trace_id", "span_id", "exception"})
_encoder = msgspec.json.Encoder()


def clip(value: object, limit: int = MAX_FIELD_CHARS) -> str:
    """``value`` as a single-line string of at most ``limit`` characters."""
    text = str(value).replace("\n", "\\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def event(logger: logging.Logger, action: str, level: int = logging.INFO, **fields: Any) -> None:
    """Log ``action`` with key=value fields (values clipped, spaces quoted)."""
    if not logger.isEnabledFor(level):
        return
    parts = [f"action={action}"]
    for key, value in fields.items():
        text = clip(value)
        parts.append(f"{key}={text!r}" if (" " in text or not text) else f"{key}={text}")
    # The action and fields ride along on the record for JsonFormatter; the text line is unchanged.
    logger.log(level, " ".join(parts), extra={"tierbox_action": action, "tierbox_fields": fields})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, action and the event's fields
    (clipped like the text form), the current span's ``trace_id``/``span_id``; a line not written by
    :func:`event` has its ``message`` instead of an action."""

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        line: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
        }
        action = getattr(record, "tierbox_action", None)
        if action is not None:
            line["action"] = action
            for key, value in getattr(record, "tierbox_fields", {}).items():
                line[f"field_{key}" if key in _FIXED_KEYS else key] = _json_value(value)
        else:
            line["message"] = clip(record.getMessage(), 2000)
        ids = tracing.current_ids()
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return _encoder.encode(line).decode()


def _json_value(value: object) -> object:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return clip(value)


def log_format(value: str | None = None) -> str:
    """The log format to use: ``value``, else ``TIERBOX_LOG_FORMAT``, else ``text``; ConfigError otherwise."""
    chosen = (value if value is not None else os.environ.get(LOG_FORMAT_ENV) or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ConfigError(LOG_FORMAT_ENV, f"must be one of {', '.join(LOG_FORMATS)}, got {chosen!r}")
    return chosen


def setup(level: str = "INFO", fmt: str | None = None) -> None:
    """Configure stderr logging for an entry point (idempotent): ``fmt`` is ``text`` or ``json``,
    by default ``TIERBOX_LOG_FORMAT`` (``text`` when unset)."""
    root = logging.getLogger()
    if any(getattr(h, "_tierbox", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    if log_format(fmt) == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler._tierbox = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aio_pika", "aiormq", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
