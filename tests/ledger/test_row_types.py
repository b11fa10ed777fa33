"""A statement's row type (``Statement(..., row=)``) has one field per column the statement returns.

A NamedTuple is built positionally from each row, so a column added to or dropped from the SQL
without its row type would fail only when the statement first runs; Postgres describes the
prepared statement here, so the mismatch shows without running anything.
"""

from __future__ import annotations

import psycopg
import pytest

from outbox._sql import Statement
from tests.ledger.test_statements import STATEMENTS, positional

TYPED = [(name, stmt) for name, stmt in STATEMENTS if stmt.row is not None]


def result_columns(tx: psycopg.Connection, stmt: Statement) -> int:
    """How many columns Postgres says ``stmt`` returns (prepared and described, never executed)."""
    sql, _ = positional(stmt)
    tx.execute(f"PREPARE tierbox_row AS {sql}")
    try:
        return tx.pgconn.describe_prepared(b"tierbox_row").nfields
    finally:
        tx.execute("DEALLOCATE tierbox_row")


#: outbox statements that return columns nobody reads, so they need no row type. Anything else of
#: outbox's that returns rows must name one (the positional reads it replaces: ``rows[0][0]``).
UNREAD = {
    "outbox._transitions.DISCARD": "outbox.discard() returns void; the caller only wants its refusal",
    "outbox._transitions.LOCK_JOBS": "selected FOR UPDATE for the locks it takes, in id order",
    "outbox._transitions.DEAD_MESSAGE": "the failure group count is for the statement's own upsert",
    "outbox._queries.INSERT_PROGRESS": "best-effort write; the event id and notify count are not used",
}


def test_typed_statements_are_found() -> None:
    assert {"outbox._transitions.CLAIM", "tierbox.relay.queries.LAG", "tierbox.ops.queries.ATTEMPTS",
            "tierbox.scheduler.queries.LIST_SCHEDULES", "outbox._transitions.ENQUEUE", "outbox._transitions.ENQUEUE_ONE",
            "outbox._transitions.REDRIVE", "outbox._queries.JOB_IDS_BY_KEY", "outbox._queries.SCHEMA_REVISION",
            "outbox._queries.TESTING_DUE", "outbox._queries.TESTING_JOBS"} <= {name for name, _ in TYPED}


def test_every_outbox_statement_that_returns_rows_names_its_row_type(tx: psycopg.Connection) -> None:
    untyped = {name for name, stmt in STATEMENTS
               if name.startswith("outbox.") and stmt.row is None and result_columns(tx, stmt) > 0}
    assert untyped == set(UNREAD)


@pytest.mark.parametrize(("attr", "stmt"), TYPED, ids=[name for name, _ in TYPED])
def test_row_type_has_a_field_per_column(attr: str, stmt: Statement, tx: psycopg.Connection) -> None:
    assert stmt.row is not None
    assert len(stmt.row._fields) == result_columns(tx, stmt), (attr, stmt.row.__name__)  # type: ignore[attr-defined]


def test_a_row_type_one_field_short_is_caught(tx: psycopg.Connection) -> None:
    from typing import NamedTuple

    class Short(NamedTuple):
        job_id: str

    stmt = Statement("t.short", "SELECT job_id, new_job_id FROM outbox.redrive_where()", row=Short)
    assert result_columns(tx, stmt) == 2 != len(Short._fields)
