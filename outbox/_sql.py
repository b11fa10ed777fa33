"""Named SQL statements and the thin executors that run them on any connection kind.

A :class:`Statement` is written once with ``:name`` parameters and runs on a
SQLAlchemy ``Session``/``Connection`` (sync or async) or on a raw psycopg 3
connection, so nothing is written twice for sync, async and raw paths.
Statements never commit: the transaction always belongs to the caller.

A statement that returns rows can name its row type (``row=``, a ``NamedTuple``):
:func:`run` and :func:`run_async` then return those, so callers read ``row.job_id``,
not ``row[0]``, and mypy checks the fields. A NamedTuple is still a tuple, so the
columns' order stays the contract and the cost is one constructor call per row.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeAlias, TypeVar, overload

import psycopg
from sqlalchemy import TextClause, text
from sqlalchemy.engine import Connection as SAConnection
from sqlalchemy.ext.asyncio import AsyncConnection as SAAsyncConnection
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

# ":name" but not the "::" of a cast.
_PARAM = re.compile(r"(?<![:\w]):([A-Za-z_]\w*)")

Row = Sequence[Any]
#: A statement's row type: a NamedTuple class, or a plain tuple when the statement names none.
R = TypeVar("R", bound=tuple[Any, ...])

#: What enqueue and redrive accept as the caller's transaction, sync form.
SyncSession: TypeAlias = "Session | SAConnection | psycopg.Connection[Any]"
#: The async form: an ``AsyncSession``, an ``AsyncConnection`` or a psycopg ``AsyncConnection``.
AsyncSessionLike: TypeAlias = "AsyncSession | SAAsyncConnection | psycopg.AsyncConnection[Any]"


class Statement(Generic[R]):
    """One SQL statement with ``:name`` parameters, runnable on every connection kind."""

    __slots__ = ("_pg", "_sa", "name", "row", "sql")

    @overload
    def __init__(self: Statement[tuple[Any, ...]], name: str, sql: str) -> None: ...

    @overload
    def __init__(self, name: str, sql: str, row: type[R]) -> None: ...

    def __init__(self, name: str, sql: str, row: type[R] | None = None) -> None:
        self.name = name
        #: The NamedTuple each returned row becomes, or None for plain tuples.
        self.row = row
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


def _typed(stmt: Statement[R], rows: Sequence[Sequence[Any]]) -> list[R]:
    make = stmt.row
    if make is None:
        return [tuple(r) for r in rows]  # type: ignore[misc]  # R is tuple[Any, ...] without row=
    return [make(*r) for r in rows]


def run(conn: Any, stmt: Statement[R], params: Mapping[str, Any] | None = None) -> list[R]:
    """Execute on a sync Session, Connection or psycopg connection; returns all rows."""
    params = dict(params or {})
    if isinstance(conn, Session):
        conn = conn.connection()
    if isinstance(conn, SAConnection):
        result = conn.execute(stmt.sa, params)
        return _typed(stmt, list(result)) if result.returns_rows else []
    if isinstance(conn, psycopg.Connection):
        cur = conn.execute(stmt.pg, params, prepare=True)
        return _typed(stmt, cur.fetchall()) if cur.description else []
    raise TypeError(
        f"session: expected a SQLAlchemy Session/Connection or psycopg Connection, got {type(conn).__name__}"
    )


async def run_async(conn: Any, stmt: Statement[R], params: Mapping[str, Any] | None = None) -> list[R]:
    """Execute on an AsyncSession, AsyncConnection or psycopg AsyncConnection; returns all rows."""
    params = dict(params or {})
    if isinstance(conn, AsyncSession):
        conn = await conn.connection()
    if isinstance(conn, SAAsyncConnection):
        result = await conn.execute(stmt.sa, params)
        return _typed(stmt, list(result)) if result.returns_rows else []
    if isinstance(conn, psycopg.AsyncConnection):
        cur = await conn.execute(stmt.pg, params, prepare=True)
        return _typed(stmt, await cur.fetchall()) if cur.description else []
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
