"""``migrations/functions.sql`` is what a migrated database holds: every function and trigger of schema outbox.

The file is run into a second migrated database whose outbox functions were dropped first, so what
Postgres then holds is exactly what the file defines. Postgres keeps a function's body verbatim, so
``pg_get_functiondef`` shows any drift, down to a space; the header (arguments, defaults, return
type) is compared in Postgres's own normal form.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import _clone, _drop, _with_db
from tierbox import migrations

FUNCTIONS_SQL = Path(migrations.__file__).resolve().parent / "functions.sql"

# Every function in schema outbox, keyed by name and argument types, e.g. "outbox.reap(integer)".
_FUNCTIONS = """
SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid)
FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE n.nspname = 'outbox'
"""

# Every user trigger on a table of schema outbox, keyed by table and trigger name; not the copies
# Postgres clones onto each partition of a partitioned table (tgparentid: revision 0017).
_TRIGGERS = """
SELECT c.oid::regclass::text || '.' || t.tgname, pg_get_triggerdef(t.oid)
FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = 'outbox' AND NOT t.tgisinternal AND t.tgparentid = 0
"""


def _catalog(url: str, query: str) -> dict[str, str]:
    with psycopg.connect(url) as conn:
        return {key: definition for key, definition in conn.execute(query).fetchall()}


def _load_file(url: str, sql: str) -> None:
    """Drop every outbox function (and so the triggers that call them), then run ``sql``."""
    with psycopg.connect(url, autocommit=True) as conn:
        for signature in _catalog(url, _FUNCTIONS):
            conn.execute(f"DROP FUNCTION {signature} CASCADE")
        conn.execute(sql.encode())  # bytes: psycopg runs it as is (no parameters), every statement of it


def drift(migrated_url: str, scratch_url: str, sql: str) -> list[str]:
    """How ``sql`` differs from the migrated database: one line per function or trigger, empty if none."""
    _load_file(scratch_url, sql)
    found: list[str] = []
    for kind, query in (("function", _FUNCTIONS), ("trigger", _TRIGGERS)):
        migrated, from_file = _catalog(migrated_url, query), _catalog(scratch_url, query)
        found += [f"{kind} {key} is in the migrated database, not in the file"
                  for key in sorted(migrated.keys() - from_file.keys())]
        found += [f"{kind} {key} is in the file, not in the migrated database"
                  for key in sorted(from_file.keys() - migrated.keys())]
        found += [f"{kind} {key} differs from the migrated database"
                  for key in sorted(migrated.keys() & from_file.keys()) if migrated[key] != from_file[key]]
    return found


@pytest.fixture
def scratch_db_url(service_urls: dict[str, str], template_db: str) -> Iterator[str]:
    """A second fresh migrated database, for the file's definitions."""
    admin = service_urls["postgres"]
    name = _clone(admin, template_db)
    yield _with_db(admin, name)
    _drop(admin, name)


def test_the_file_defines_every_function_and_trigger_as_migrated(db_url: str, scratch_db_url: str) -> None:
    assert drift(db_url, scratch_db_url, FUNCTIONS_SQL.read_text()) == []


def test_the_file_covers_the_functions_it_should(db_url: str) -> None:
    # Not vacuous: the comparison above sees all fifteen functions and the two triggers.
    assert set(_catalog(db_url, _FUNCTIONS)) == {
        "outbox.notify_pending()", "outbox.start_attempt(uuid,text,double precision,boolean,uuid)",
        "outbox.reap(integer)", "outbox.redrive(uuid,text,text,text)", "outbox.discard(uuid,text,text)",
        "outbox.redrive_where(text,text,text,timestamp with time zone,timestamp with time zone,text,text,text,integer)",
        # revision 0010: the shared failure-group upsert and the group actions
        "outbox.record_failure_group(text,text,text,text,text[],text,text,text,text,integer,integer,uuid,"
        "timestamp with time zone)",
        "outbox.failure_group_open(text)", "outbox.redrive_group(text,integer,text,text,text,text,text)",
        "outbox.discard_group(text,integer,text,text,text,text)",
        "outbox.set_failure_group_status(text,text,text,text,text,text)",
        # revision 0012: job events
        "outbox.record_job_event()",
        # revision 0013: completion webhooks
        "outbox.enqueue_webhook_delivery()",
        # revision 0017: UUIDv7 job ids
        "outbox.uuid7()",
        # revision 0018: tier_health's rows without JIT
        "outbox.tier_health_rows()",
    }
    assert set(_catalog(db_url, _TRIGGERS)) == {"outbox.pending.notify_pending", "outbox.jobs.record_job_event",
                                                "outbox.jobs.enqueue_webhook_delivery"}


def test_a_body_one_space_off_is_named(db_url: str, scratch_db_url: str) -> None:
    sql = FUNCTIONS_SQL.read_text()
    assert sql.count("job_id := j.id; decision := 'dead';") == 1  # in reap's body
    drifted = sql.replace("job_id := j.id; decision := 'dead';", "job_id := j.id;  decision := 'dead';")
    assert drift(db_url, scratch_db_url, drifted) == ["function outbox.reap(integer) differs from the migrated database"]


def test_a_missing_function_and_a_changed_trigger_are_named(db_url: str, scratch_db_url: str) -> None:
    sql = FUNCTIONS_SQL.read_text()
    start = sql.index("CREATE OR REPLACE FUNCTION outbox.discard(")
    without_discard = sql[:start] + sql[sql.index("END $$;", start) + len("END $$;"):]
    changed = without_discard.replace("AFTER INSERT ON outbox.pending", "AFTER INSERT OR UPDATE ON outbox.pending")
    changed = changed.replace("    REFERENCING NEW TABLE AS inserted\n", "")
    assert drift(db_url, scratch_db_url, changed) == [
        "function outbox.discard(uuid,text,text) is in the migrated database, not in the file",
        "trigger outbox.pending.notify_pending differs from the migrated database",
    ]
