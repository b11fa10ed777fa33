"""Named SQL statements and the thin executors that run them on any connection kind.

A :class:`Statement` is written once with ``:name`` parameters and runs on a
SQLAlchemy ``Session``/``Connection`` (sync or async) or on a raw psycopg 3
connection, so nothing is written twice for sync, async and raw paths.
Statements never commit: the transaction always belongs to the caller.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

# ":name" but not the "::" of a cast.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Row = Sequence[Any]


class Statement:
    """One SQL statement with ``:name`` parameters, runnable on every connection kind."""

    __slots__ = ("_pg", "_sa", "name", "sql")

    def __init__(self, name: str, sql: str) -> None:
        self.name = name
        self.sql = sql.strip()
        self._sa: TextClause = text(self.sql)
        self._pg = _PARAM.sub(r"%(\1)s", self.sql.replace("%", "%%"))

    @property
    def sa(self) -> TextClause:
        """The statement as a SQLAlchemy ``text()`` clause."""
        return self._sa

    @property
    def pg(self) -> str:
        """The statement in psycopg's ``%(name)s`` style."""
        return self._pg

    def __repr__(self) -> str:
        return f"Statement({self.name!r})"


def run(conn: Any, stmt: Statement, params: Mapping[str, Any] | None = None) -> list[Row]:
    """Execute on a sync Session, Connection or psycopg connection; returns all rows."""
    params = dict(params or {})
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, SAConnection):
        result = conn.execute(stmt.sa, params)
        return [tuple(r) for r in result] if result.returns_rows else []
    if isinstance(conn, psycopg.Connection):
        cur = conn.execute(stmt.pg, params, prepare=True)
        return cur.fetchall() if cur.description else []
    raise TypeError(
        f"session: expected a SQLAlchemy Session/Connection or psycopg Connection, got {type(conn).__name__}"
    )


async def run_async(conn: Any, stmt: Statement, params: Mapping[str, Any] | None = None) -> list[Row]:
    """Execute on an AsyncSession, AsyncConnection or psycopg AsyncConnection; returns all rows."""
    params = dict(params or {})
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, SAAsyncConnection):
        result = await conn.execute(stmt.sa, params)
        return [tuple(r) for r in result] if result.returns_rows else []
    if isinstance(conn, psycopg.AsyncConnection):
        cur = await conn.execute(stmt.pg, params, prepare=True)
        return await cur.fetchall() if cur.description else []
    raise TypeError(
        f"session: expected a SQLAlchemy AsyncSession/AsyncConnection or psycopg AsyncConnection, "
        f"got {type(conn).__name__}"
    )


@contextlib.contextmanager
def savepoint(conn: Any) -> Iterator[None]:
    """A savepoint in the caller's transaction (a sync Session/Connection or psycopg connection)."""
    if isinstance(conn, psycopg.Connection):
        with conn.transaction():
            yield
    elif isinstance(conn, (Session, SAConnection)):
        with conn.begin_nested():
            yield
    else:
        raise TypeError(f"session: expected a SQLAlchemy Session/Connection or psycopg Connection, "
                        f"got {type(conn).__name__}")


@contextlib.asynccontextmanager
async def savepoint_async(conn: Any) -> AsyncIterator[None]:
    """:func:`savepoint` for an AsyncSession, AsyncConnection or psycopg AsyncConnection."""
    if isinstance(conn, psycopg.AsyncConnection):
        async with conn.transaction():
            yield
    elif isinstance(conn, (AsyncSession, SAAsyncConnection)):
        async with conn.begin_nested():
            yield
    else:
        raise TypeError(f"session: expected a SQLAlchemy AsyncSession/AsyncConnection or psycopg AsyncConnection, "
                        f"got {type(conn).__name__}")


def is_async_connection(conn: Any) -> bool:
    """True for the connection kinds :func:`run_async` accepts."""
    return isinstance(conn, (AsyncSession, SAAsyncConnection, psycopg.AsyncConnection))
