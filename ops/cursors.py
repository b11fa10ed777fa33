"""Opaque keyset cursors: the sort key of the last row of a page, URL-safe."""

from __future__ import annotations

import base64
from datetime import datetime

from tierbox.ops.errors import invalid

#: The largest Postgres ``bigint``: a numeric key or id from a caller above it is refused before a query (Postgres
#: would raise ``NumericValueOutOfRange``, a 500).
BIGINT_MAX = 2**63 - 1


def is_bigint(text: str) -> bool:
    """Whether ``text`` is a non-negative ``bigint`` in ASCII digits, so ``int()`` and Postgres both take it.

    ``str.isdigit()`` alone also takes ``'²'`` (``int()`` then raises) and any length (Postgres then refuses
    the value; past 4,300 digits ``int()`` refuses it too): either was a 500 for a forged id or cursor.
    """
    return text.isascii() and text.isdigit() and len(text) <= 19 and int(text) <= BIGINT_MAX


def encode(at: datetime, key: object) -> str:
    """A cursor after the row sorted at (``at``, ``key``)."""
    return base64.urlsafe_b64encode(f"{at.isoformat()}|{key}".encode()).decode().rstrip("=")


def decode(cursor: str | None) -> tuple[datetime | None, str | None]:
    """(``at``, ``key``) of a cursor, or (None, None); raises a 422 naming ``cursor`` if it is not ours."""
    if not cursor:
        return None, None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        at, key = raw.split("|", 1)
        parsed = datetime.fromisoformat(at)
    except ValueError as exc:
        raise invalid("cursor", "not a cursor this API returned") from exc
    if parsed.tzinfo is None or not key:
        raise invalid("cursor", "not a cursor this API returned")
    return parsed, key
