"""Payloads as operators see them: secrets masked, big values replaced by their size.

Applied to every payload and header map the API and CLI show. The default
rules mask values under keys that look like credentials, recursively, and
replace long strings and oversized bodies by a ``<N bytes>`` marker. A task
can add its own rule::

    from tierbox.ops.redaction import redactor

    @redactor("billing.charge")
    def _charge(payload):
        payload["kwargs"]["iban"] = "***"
        return payload

The task's hook runs on a copy, before the default rules (which always run).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Sequence
from typing import Any

import msgspec

MASK = "***"
#: Keys whose values are never shown (matched case-insensitively anywhere in the key).
SECRET_KEY = re.compile(r"passw(or)?d|passphrase|secret|token|api[_-]?key|authorization|cookie|credential|"
                        r"private[_-]?key|session|signature|ssn|card[_-]?number|cvv|iban|(^|[_.-])auth($|[_.-])",
                        re.IGNORECASE)
#: Strings longer than this are shown as their size.
MAX_STRING_CHARS = 512
#: Payloads whose JSON is larger than this are shown as their size only.
MAX_PAYLOAD_BYTES = 64 * 1024

Redactor = Callable[[Any], Any]
#: Per-task hooks, keyed by task name.
REDACTORS: dict[str, Redactor] = {}


def redactor(task: str) -> Callable[[Redactor], Redactor]:
    """Register ``fn`` as the redaction hook of ``task`` (decorator)."""
    def register(fn: Redactor) -> Redactor:
        REDACTORS[task] = fn
        return fn
    return register


def redact(value: Any, task: str | None = None) -> Any:
    """``value`` safe to show: the task's hook, then the default rules; never mutates ``value``."""
    if value is None:
        return None
    size = len(msgspec.json.encode(value))
    if size > MAX_PAYLOAD_BYTES:
        return f"<{size} bytes>"
    hook = REDACTORS.get(task or "")
    if hook is not None:
        value = hook(copy.deepcopy(value))
    return _mask(value)


def redacted_row(columns: Sequence[str], row: Sequence[Any]) -> dict[str, Any]:
    """A statement row as a dict with its ``payload`` and ``headers`` redacted for its ``task``."""
    values = dict(zip(columns, row, strict=True))
    values["payload"] = redact(values["payload"], values["task"])
    values["headers"] = redact(values["headers"], values["task"])
    return values


def _mask(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: MASK if SECRET_KEY.search(str(k)) else _mask(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask(v) for v in value]
    if isinstance(value, str) and len(value) > MAX_STRING_CHARS:
        return f"<{len(value.encode())} bytes>"
    return value
