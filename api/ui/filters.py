"""Jinja filters of the dashboard: durations, times, JSON and tracebacks as operators read them."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import msgspec
from litestar.plugins.jinja import JinjaTemplateEngine

#: What a missing value shows (an en dash).
NONE = "\u2013"
#: ``name=value`` or ``name: value`` in a traceback whose name looks like a credential: the value is masked
#: (tracebacks can quote local values; payloads are redacted by ``ops.redaction``, this does the text).
_SECRET_ASSIGN = re.compile(r"(?i)(\b[\w.-]*(?:passw(?:or)?d|secret|token|api[_-]?key|authorization|cookie|"
                            r"credential|private[_-]?key|session)[\w.-]*['\"]?\s*[=:]\s*)(['\"]?)[^\s'\",)]+")


def seconds(value: float | None) -> str:
    """A duration: ``850 ms``, ``12.3 s``, ``4 min``, ``2.5 h``; ``-`` for none."""
    if value is None:
        return NONE
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 60:
        return f"{value:.1f} s"
    if value < 3600:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def when(value: dt.datetime | None) -> str:
    """A time in UTC to the second; ``-`` for none."""
    if value is None:
        return NONE
    return value.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def ago(value: dt.datetime | None) -> str:
    """How long ago (or, in the future, ``in ...``)."""
    if value is None:
        return NONE
    delta = (dt.datetime.now(dt.UTC) - value).total_seconds()
    return f"{seconds(delta)} ago" if delta >= 0 else f"in {seconds(-delta)}"


def pretty(value: Any) -> str:
    """Indented JSON of an (already redacted) payload."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def redact_text(value: str | None) -> str:
    """A traceback or message with credential-looking assignments masked."""
    return _SECRET_ASSIGN.sub(r"\1\2***", value or "")


def register(engine: JinjaTemplateEngine) -> None:
    """``engine_callback`` of the template config."""
    for name, fn in (("seconds", seconds), ("when", when), ("ago", ago), ("pretty", pretty),
                     ("redact_text", redact_text)):
        engine.engine.filters[name] = fn
