"""The alembic migrations against real Postgres: they build exactly ``outbox.metadata`` and nothing else."""

from __future__ import annotations

import re
import uuid
from typing import Any

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

import outbox
from outbox.schema import SCHEMA
from tierbox import migrations


def script() -> ScriptDirectory:
    return ScriptDirectory.from_config(migrations.alembic_config("postgresql://unused@localhost/unused"))


def revisions_base_to_head() -> list[str]:
    """Every revision, oldest first."""
    return [r.revision for r in reversed(list(script().walk_revisions("base", "heads")))]


def _is_partition(name: str | None) -> bool:
    """A day or default partition of the history (revision 0017): made at run time, not in the metadata."""
    return name is not None and re.fullmatch(r"(jobs|attempts|job_events)_(default|p\d{8}(_\d+)?)", name) is not None


def _include_name(name: str | None, type_: str, parent_names: Any) -> bool:
    if type_ == "schema":
        return name == SCHEMA
    if type_ == "table":
        return name != migrations.VERSION_TABLE and not _is_partition(name)
    return True


def _include_object(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
    if type_ == "foreign_key_constraint" and _is_partition(obj.referred_table.name):
        return False  # Postgres's per-partition copy of a foreign key to a partitioned table
    if type_ == "table":
        return obj.schema == SCHEMA and name != migrations.VERSION_TABLE
    table = getattr(obj, "table", None)
    return table is None or (table.schema == SCHEMA and table.name != migrations.VERSION_TABLE)


def schema_diff(url: str) -> list[Any]:
    """What alembic autogenerate would change to make the database match ``outbox.metadata``."""
    engine = create_engine("postgresql+psycopg://" + url.partition("://")[2])
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={
                "include_schemas": True, "include_name": _include_name, "include_object": _include_object,
                "compare_type": True, "compare_server_default": True,
            })
            return list(compare_metadata(ctx, outbox.metadata))
    finally:
        engine.dispose()


NS = "(SELECT oid FROM pg_namespace WHERE nspname = %(s)s)"


def snapshot(url: str) -> dict[str, Any]:
    """Everything in the outbox schema that a migration could change, plus alembic's version."""
    with psycopg.connect(url) as conn:
        def rows(sql: str) -> list[tuple[Any, ...]]:
            return conn.execute(sql, {"s": SCHEMA} if "%(s)s" in sql else None).fetchall()

        def ours(sql: str) -> list[tuple[Any, ...]]:
            # alembic's version table is created by env.py before any revision runs: compared via "version".
            return [r for r in rows(sql) if migrations.VERSION_TABLE not in str(r[0])]

        def exists(table: str) -> bool:
            return rows(f"SELECT to_regclass('{table}')")[0][0] is not None

        return {
            "columns": ours("SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity "
                            "FROM information_schema.columns WHERE table_schema = %(s)s ORDER BY 1, 2"),
            "constraints": ours("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                                f"FROM pg_constraint WHERE connamespace = {NS} ORDER BY 1, 2"),
            "indexes": ours("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = %(s)s ORDER BY 1"),
            "functions": rows("SELECT p.proname, pg_get_function_identity_arguments(p.oid), md5(p.prosrc) "
                              f"FROM pg_proc p WHERE p.pronamespace = {NS} ORDER BY 1, 2"),
            "triggers": rows("SELECT tgrelid::regclass::text, tgname FROM pg_trigger t JOIN pg_class c "
                             f"ON c.oid = t.tgrelid WHERE c.relnamespace = {NS} AND NOT t.tgisinternal ORDER BY 1, 2"),
            "relations": ours(f"SELECT relname, relkind, reloptions FROM pg_class WHERE relnamespace = {NS} "
                              "ORDER BY 1"),
            "comments": ours("SELECT c.relname, obj_description(c.oid, 'pg_class') FROM pg_class c "
                             f"WHERE c.relnamespace = {NS} AND c.relkind = 'r' ORDER BY 1"),
            "tiers": rows("SELECT * FROM outbox.tiers ORDER BY name") if exists("outbox.tiers") else [],
            "version": rows("SELECT version_num FROM outbox.alembic_version ORDER BY 1")
            if exists("outbox.alembic_version") else [],
        }


def outbox_objects(url: str) -> dict[str, list[str]]:
    """Tables, functions and types left in the outbox schema."""
    with psycopg.connect(url) as conn:
        return {
            "tables": [r[0] for r in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'outbox'::regnamespace AND relkind IN "
                "('r', 'p', 'v', 'm', 'S') ORDER BY 1")],
            "functions": [r[0] for r in conn.execute(
                "SELECT proname FROM pg_proc WHERE pronamespace = 'outbox'::regnamespace ORDER BY 1")],
        }


def test_exactly_one_head() -> None:
    heads = script().get_heads()
    assert len(heads) == 1, f"several heads, merge them: {heads}"
    assert revisions_base_to_head()[-1] == heads[0]


def test_upgraded_database_matches_metadata(db_url: str) -> None:
    """db_url is cloned from a database upgraded to head."""
    diff = schema_diff(db_url)
    assert diff == [], "migrations and outbox/schema.py disagree:\n" + "\n".join(map(repr, diff))


def test_table_storage_options_match_metadata(db_url: str) -> None:
    # Autogenerate does not compare WITH (...) options; the hot-path tables depend on them. A partitioned
    # table has none of its own: each of its partitions (revision 0017) carries info["partition_storage"].
    relations = snapshot(db_url)["relations"]
    reloptions = {name: options for name, kind, options in relations if kind in ("r", "p")}
    partitions = [name for name in reloptions if _is_partition(name)]
    assert {"jobs_default", "attempts_default", "job_events_default"} <= set(partitions)
    for table in outbox.metadata.sorted_tables:
        expected = {k: str(v) for k, v in table.dialect_options["postgresql"]["with"].items()} \
            if table.dialect_options["postgresql"].get("with") else {}
        actual = dict(opt.split("=", 1) for opt in reloptions.get(table.name) or [])
        assert actual == expected, table.name
        for part in (p for p in partitions if p.rsplit("_", 1)[0] in (table.name, f"{table.name}_p")
                     or re.fullmatch(rf"{table.name}_(default|p\d{{8}}(_\d+)?)", p)):
            actual = dict(opt.split("=", 1) for opt in reloptions.get(part) or [])
            assert actual == table.info.get("partition_storage", {}), part
    assert set(reloptions) - set(partitions) == {t.name for t in outbox.metadata.sorted_tables}


def test_every_revision_goes_up_down_up(empty_db_url: str) -> None:
    revisions = revisions_base_to_head()
    assert revisions, "no revisions found"
    previous = "base"
    for rev in revisions:
        before = snapshot(empty_db_url)
        migrations.upgrade(empty_db_url, rev)
        after = snapshot(empty_db_url)
        assert after["version"] == [(rev,)]
        migrations.downgrade(empty_db_url, previous)
        assert snapshot(empty_db_url) == before, f"downgrade of {rev} did not restore {previous}"
        migrations.upgrade(empty_db_url, rev)
        assert snapshot(empty_db_url) == after, f"re-upgrade to {rev} differs from the first upgrade"
        previous = rev

    # Down to base leaves nothing of ours but alembic's (empty) version table.
    migrations.downgrade(empty_db_url, "base")
    assert outbox_objects(empty_db_url) == {"tables": [migrations.VERSION_TABLE], "functions": []}
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.alembic_version").fetchone() == (0,)


def test_migrating_twice_is_a_no_op(empty_db_url: str) -> None:
    migrations.upgrade(empty_db_url)
    first = snapshot(empty_db_url)
    migrations.upgrade(empty_db_url)
    assert snapshot(empty_db_url) == first
    assert first["version"] == [(script().get_current_head(),)]


def test_applications_own_alembic_version_is_untouched(empty_db_url: str) -> None:
    with psycopg.connect(empty_db_url) as conn:
        conn.execute("CREATE TABLE public.alembic_version (version_num varchar(32) NOT NULL PRIMARY KEY)")
        conn.execute("INSERT INTO public.alembic_version VALUES ('app_rev_42')")
    migrations.upgrade(empty_db_url)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [("app_rev_42",)]
        assert conn.execute("SELECT version_num FROM outbox.alembic_version").fetchall() == \
            [(script().get_current_head(),)]
    migrations.downgrade(empty_db_url, "base")
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT version_num FROM public.alembic_version").fetchall() == [("app_rev_42",)]
        # Nothing of the outbox landed in public either.
        assert conn.execute("SELECT count(*) FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                            "AND relkind = 'r'").fetchone() == (1,)


def test_the_revision_the_code_requires_is_the_newest_migration() -> None:
    from outbox._maintenance import REQUIRED_REVISION

    assert REQUIRED_REVISION == script().get_current_head()


async def test_relay_and_worker_refuse_an_outdated_schema_naming_the_fix(
        empty_db_url: str, service_urls: dict[str, str]) -> None:
    """Rolled out before `tierbox migrate`: a relay or worker says what to run (and its connect loop
    retries, so it starts once the schema is migrated) instead of failing every start."""
    from outbox._maintenance import REQUIRED_REVISION
    from outbox.config import Settings
    from outbox.errors import SchemaOutdatedError
    from outbox.registry import Registry
    from outbox.tiers import PoolSpec
    from tierbox.relay import Relay
    from tierbox.workers.pool import Pool

    settings = Settings(database_url=empty_db_url, amqp_url=service_urls["rabbitmq"],
                        redis_url=service_urls["redis"], queue_prefix=f"schema-{uuid.uuid4().hex[:6]}-")
    pool = Pool(settings, "urgent", PoolSpec(tiers=("critical",)), Registry())
    try:
        with pytest.raises(SchemaOutdatedError, match=r"no outbox schema .* run `tierbox migrate` first"):
            await Relay.connect(settings)
        migrations.upgrade(empty_db_url, "0005")
        needs = f"at revision 0005, this Tierbox needs {REQUIRED_REVISION}: run `tierbox migrate`"  # head (a test above)
        with pytest.raises(SchemaOutdatedError, match=needs):
            await Relay.connect(settings)
        with pytest.raises(SchemaOutdatedError, match="at revision 0005"):
            await pool.start()
        migrations.upgrade(empty_db_url)
        relay = await Relay.connect(settings)  # migrated: it connects
        await relay.close()
    finally:
        await pool.async_engine.dispose()
        await pool.ledger_engine.dispose()
        pool.sync_engine.dispose()
