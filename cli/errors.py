"""How every ``tierbox`` command fails: one line on stderr naming what to fix, never a traceback.

:func:`one_line_errors` wraps every command. Exit codes: 2 for input the operator must
correct (as click does for bad flags), 1 for everything else an operator can fix
(an unreachable or unmigrated service, a refused action). Anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import NoReturn, ParamSpec, TypeVar

import click

from outbox.errors import TierboxError
from tierbox.ops.errors import RequestError

P = ParamSpec("P")
R = TypeVar("R")


def one_line_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Turn operator-fixable failures raised by ``fn`` into one line on stderr and an exit code."""
    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except RequestError as exc:
            _exit(exc.message, 2 if exc.status == 422 else 1)
        except (TierboxError, OSError) as exc:
            _exit(str(exc), 1)
        except Exception as exc:
            line = service_error(exc)
            if line is None:
                raise
            _exit(line, 1)
    return wrapper


def _exit(line: str, code: int) -> NoReturn:
    click.echo(f"tierbox: {line}", err=True)
    sys.exit(code)


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
