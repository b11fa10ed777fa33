"""An exception as the ledger records it: type, bounded message, bounded traceback.

Shared by the workers and :mod:`outbox.testing`, so a job that fails under ``drain()`` leaves the
same ``attempts`` / ``dead_letters`` columns as one that fails in a worker.
"""

from __future__ import annotations

import traceback as tb
from typing import Any

import msgspec

from outbox._logs import clip

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 16000


class ErrorInfo(msgspec.Struct, frozen=True):
    """An exception, bounded in size for the attempts and dead_letters tables."""

    type: str
    message: str
    traceback: str | None = None

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """Capture ``exc`` with its traceback (the tail, if it is longer than the column keeps)."""
        text = "".join(tb.format_exception(exc))
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
        return cls(type(exc).__qualname__, clip(str(exc) or type(exc).__name__, MAX_ERROR_MESSAGE_CHARS), text)

    def params(self) -> dict[str, Any]:
        """As statement parameters."""
        return {"error_type": self.type, "error_message": self.message, "traceback": self.traceback}
