"""Every named SQL statement parses, type-checks and plans on the migrated schema.

Statements are discovered by scanning the ``queries`` modules for
:class:`outbox.sql.Statement` attributes, so a new statement is covered the
moment it is written. Each one is sent to Postgres exactly as psycopg sends
it (``Statement.pg``), with its ``%(name)s`` placeholders turned into ``$n``
parameters whose types Postgres must infer, then ``PREPARE``d (parse, analyse,
rewrite) and ``EXPLAIN EXECUTE``d with NULLs (plan), inside a transaction
that is rolled back. Nothing runs: EXPLAIN without ANALYZE executes nothing.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from types import ModuleType

import psycopg
import pytest

from outbox._sql import Statement

QUERY_MODULES = ["outbox._transitions", "outbox._queries", "tierbox.relay.queries", "tierbox.scheduler.queries", "tierbox.workers.queries", "tierbox.flow.queries",
                 "tierbox.ops.queries", "tierbox.webhooks.queries"]

_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


def _modules() -> list[ModuleType]:
    """Every query module; a missing one fails the collection instead of shrinking the check."""
    return [importlib.import_module(name) for name in QUERY_MODULES]


def discover() -> list[tuple[str, Statement]]:
    """(module.ATTRIBUTE, statement) for every Statement in the query modules, each object once.

    A module may re-export another's statements (``workers.queries`` imports
    the ledger statements from ``outbox.queries``): those are the same objects
    and are listed under the module scanned first.
    """
    out: list[tuple[str, Statement]] = []
    seen: set[int] = set()
    for module in _modules():
        for attr, value in sorted(vars(module).items()):
            if isinstance(value, Statement) and id(value) not in seen:
                seen.add(id(value))
                out.append((f"{module.__name__}.{attr}", value))
    return out


STATEMENTS = discover()


def positional(stmt: Statement) -> tuple[str, list[str]]:
    """``stmt.pg`` with ``%(name)s`` as ``$n`` (one number per distinct name) and ``%%`` as ``%``."""
    names: list[str] = []

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "%%":
            return "%"
        name = m.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return _PLACEHOLDER.sub(sub, stmt.pg), names


def test_statements_are_discovered() -> None:
    found = {name for name, _ in STATEMENTS}
    assert {"outbox._transitions.ENQUEUE", "outbox._queries.JOB_IDS_BY_KEY", "outbox._transitions.CLAIM",
            "outbox._transitions.MARK_PUBLISHED"} <= found
    for module in _modules():
        assert any(name.startswith(module.__name__ + ".") for name in found), f"no statement in {module.__name__}"


def test_statement_names_are_unique() -> None:
    names = [stmt.name for _, stmt in STATEMENTS]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)


def test_positional_conversion() -> None:
    sql, names = positional(Statement("t", "SELECT :a, :b::text, :a, '%' || :c"))
    assert sql == "SELECT $1, $2::text, $1, '%' || $3"
    assert names == ["a", "b", "c"]


@pytest.mark.parametrize(("attr", "stmt"), STATEMENTS, ids=[name for name, _ in STATEMENTS])
def test_statement_prepares_and_plans(attr: str, stmt: Statement, tx: psycopg.Connection) -> None:
    sql, names = positional(stmt)
    tx.execute(f"PREPARE tierbox_stmt AS {sql}")
    param_types = tx.execute(
        "SELECT parameter_types::text[] FROM pg_prepared_statements WHERE name = 'tierbox_stmt'").fetchone()
    assert param_types is not None
    assert len(param_types[0]) == len(names), (attr, param_types, names)
    assert "unknown" not in param_types[0], f"{attr}: Postgres cannot infer a parameter type: {param_types[0]}"
    args = ", ".join(["NULL"] * len(names))
    plan = tx.execute(f"EXPLAIN EXECUTE tierbox_stmt{f'({args})' if names else ''}").fetchall()
    assert plan, attr
    tx.execute("DEALLOCATE tierbox_stmt")


# A write to a job's state: its ledger tables, or a SQL function that moves it.
_JOB_STATE_WRITE = re.compile(
    r"\b(INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+outbox\.(jobs|pending|attempts|leases|dead_letters)\b"
    r"|\boutbox\.(start_attempt|reap|redrive|redrive_where|discard|redrive_group|discard_group)\s*\(", re.IGNORECASE)


def test_every_statement_that_changes_a_job_lives_in_transitions() -> None:
    elsewhere = [name for name, st in STATEMENTS
                 if not name.startswith("outbox._transitions.") and _JOB_STATE_WRITE.search(st.sql)]
    assert elsewhere == []
    # ... and it holds nothing else: each statement there writes, or locks the rows a transition
    # of the same transaction then writes (the relay's claim, the lock before marking published).
    locks = re.compile(r"\bFOR\s+(NO\s+KEY\s+)?UPDATE\b", re.IGNORECASE)
    idle = [name for name, st in STATEMENTS if name.startswith("outbox._transitions.")
            and not (_JOB_STATE_WRITE.search(st.sql) or locks.search(st.sql))]
    assert idle == []
