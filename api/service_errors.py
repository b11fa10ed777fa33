"""Failures of the services Tierbox depends on, as the one line a CLI prints instead of a traceback."""

from __future__ import annotations


def service_error(exc: BaseException) -> str | None:
    """One line naming the unreachable or unprepared service behind ``exc``; None for anything else."""
    import psycopg
    import sqlalchemy.exc

    if isinstance(exc, (psycopg.OperationalError, sqlalchemy.exc.OperationalError)):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"cannot reach Postgres ({first})"
    cause = exc.orig if isinstance(exc, sqlalchemy.exc.DBAPIError) else exc
    missing = (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName, psycopg.errors.UndefinedFunction)
    if isinstance(cause, missing):
        first = str(cause).strip().splitlines()[0]
        return f"the outbox schema is missing or outdated in Postgres ({first}): run `tierbox migrate` first"
    if type(exc).__module__.startswith(("aiormq", "aio_pika")) or isinstance(exc, ConnectionError):
        return f"cannot reach RabbitMQ ({type(exc).__name__}: {exc})"
    return None
