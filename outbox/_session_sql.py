"""``SET`` statements a Tierbox connection runs once, right after connecting (:mod:`outbox._keepalive`,
:mod:`outbox._plans`).

``SET`` rather than the ``options`` startup parameter: PgBouncer refuses unknown startup parameters
unless configured to ignore them, and these settings are ``USERSET``. Committed at once: a ``SET``
rolled back with the transaction it ran in would be undone.
"""

from __future__ import annotations

from typing import Any, TypeVar

from sqlalchemy import event

E = TypeVar("E")


def apply(conn: Any, sql: str) -> None:
    """Run ``sql`` on a new psycopg connection (committed unless it is in autocommit mode)."""
    conn.execute(sql)
    if not conn.autocommit:
        conn.commit()


async def apply_async(conn: Any, sql: str) -> None:
    """:func:`apply` for a psycopg ``AsyncConnection``."""
    await conn.execute(sql)
    if not conn.autocommit:
        await conn.commit()


def on_connect(engine: E, sql: str) -> E:
    """Run ``sql`` on every connection ``engine`` (a SQLAlchemy ``Engine`` or ``AsyncEngine``) opens;
    returns the engine."""
    target = getattr(engine, "sync_engine", engine)

    def _set(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
        dbapi_connection.commit()

    event.listen(target, "connect", _set)
    return engine
