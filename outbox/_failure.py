"""An exception as the ledger records it: type, bounded message, bounded traceback, fingerprint.

Shared by the workers and :mod:`outbox.testing`, so a job that fails under ``drain()`` leaves the
same ``attempts`` / ``dead_letters`` columns as one that fails in a worker.
"""

from __future__ import annotations

import traceback as tb
from typing import Any

import msgspec

from outbox._fingerprint import digest, fingerprint, normalize
from outbox._logs import clip

MAX_ERROR_MESSAGE_CHARS = 2000
MAX_TRACEBACK_CHARS = 16000


class ErrorInfo(msgspec.Struct, frozen=True):
    """An exception, bounded in size for the attempts and dead_letters tables."""

    type: str
    message: str
    traceback: str | None = None
    #: The failure group (outbox._fingerprint); None: computed from type and message by :meth:`params`
    #: (a failure Tierbox describes itself, e.g. ``WorkerShutdown``, has no stack to add).
    fingerprint: str | None = None
    #: The message with ids, numbers, ... replaced by placeholders (the group's representative text).
    normalized: str | None = None
    #: The application frames (``module:function``, innermost first) that went into the fingerprint.
    frames: tuple[str, ...] = ()

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        """Capture ``exc`` with its traceback (the tail, if it is longer than the column keeps) and fingerprint."""
        text = "".join(tb.format_exception(exc))
        if len(text) > MAX_TRACEBACK_CHARS:
            text = "...\n" + text[-MAX_TRACEBACK_CHARS:]
        fp = fingerprint(exc)
        return cls(type(exc).__qualname__, clip(str(exc) or type(exc).__name__, MAX_ERROR_MESSAGE_CHARS), text,
                   fp.digest, clip(fp.message, MAX_ERROR_MESSAGE_CHARS), fp.frames)

    def params(self) -> dict[str, Any]:
        """As statement parameters (RETRY, DEAD, DEAD_WITHOUT_ATTEMPT, DEAD_MESSAGE)."""
        normalized = self.normalized if self.normalized is not None else normalize(self.message)
        fp = self.fingerprint if self.fingerprint is not None else digest(self.type, normalized, self.frames)
        return {"error_type": self.type, "error_message": self.message, "traceback": self.traceback,
                "fingerprint": fp, "normalized": normalized, "frames": list(self.frames)}
