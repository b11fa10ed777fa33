"""Structured log lines: every line carries an ``action`` and, where there is one, the job id.

Lines look like ``action=relay.batch_published tier=critical count=12``.
Payloads are never logged; :func:`clip` bounds any free text (error messages).
"""

from __future__ import annotations

import logging
import sys
from typing import Any

MAX_FIELD_CHARS = 300


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
    logger.log(level, " ".join(parts))


def setup(level: str = "INFO") -> None:
    """Configure stderr logging for an entry point (idempotent)."""
    root = logging.getLogger()
    if any(getattr(h, "_tierbox", False) for h in root.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    handler._tierbox = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("aio_pika", "aiormq", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
