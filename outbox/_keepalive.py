"""Server-side TCP keepalives on the Postgres connections Tierbox's processes open.

A host cut off from the network in the middle of a transaction (a relay between its claim and its
commit, a worker's heartbeat or a handler's transaction) leaves its backend waiting for the next
message with the transaction open and its row locks held. The server only learns the client is gone
from TCP keepalives, which by the kernel's defaults start after two hours of silence: until then the
other hosts' relays skip those outbox rows (``SKIP LOCKED``), their reapers skip those leases, and
their starts of those jobs wait. Each Tierbox connection therefore asks its backend for keepalives
after :data:`IDLE_S` seconds of silence, :data:`COUNT` probes :data:`INTERVAL_S` seconds apart: a cut
host's transactions are rolled back and their locks released about 20 s after it fell silent
(tests/cluster/test_db_keepalive.py). A live but idle client answers probes from its kernel, so a
long handler transaction is never ended by this.

``SET`` after connecting (:mod:`outbox._session_sql`); on a Unix socket the settings are accepted and
do nothing.
"""

from __future__ import annotations

from typing import Any, TypeVar

from outbox import _session_sql

#: Seconds of silence before the server's first probe, seconds between probes, probes unanswered.
IDLE_S, INTERVAL_S, COUNT = 10, 3, 3

E = TypeVar("E")

SQL = (f"SET tcp_keepalives_idle = {IDLE_S}; SET tcp_keepalives_interval = {INTERVAL_S}; "
       f"SET tcp_keepalives_count = {COUNT}")


def apply(conn: Any) -> None:
    """Set the keepalives on a new psycopg connection (committed unless it is in autocommit mode)."""
    _session_sql.apply(conn, SQL)


async def apply_async(conn: Any) -> None:
    """:func:`apply` for a psycopg ``AsyncConnection``."""
    await _session_sql.apply_async(conn, SQL)


def on_connect(engine: E) -> E:
    """Set the keepalives on every connection ``engine`` (a SQLAlchemy ``Engine`` or ``AsyncEngine``)
    opens; returns the engine."""
    return _session_sql.on_connect(engine, SQL)
