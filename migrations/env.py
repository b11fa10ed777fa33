"""Alembic environment: runs the outbox revisions with their own version table."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from outbox.schema import metadata
from tierbox.migrations import VERSION_SCHEMA, VERSION_TABLE

config = context.config


def run_migrations_online() -> None:
    """Run the revisions on one connection, in one transaction."""
    engine = create_engine(config.get_main_option("sqlalchemy.url") or "", poolclass=pool.NullPool)
    with engine.connect() as connection:
        # The version table lives in the schema the first revision creates.
        connection.execute(text(f"CREATE SCHEMA IF NOT EXISTS {VERSION_SCHEMA}"))
        connection.commit()
        context.configure(
            connection=connection,
            target_metadata=metadata,
            version_table=VERSION_TABLE,
            version_table_schema=VERSION_SCHEMA,
            include_schemas=True,
            include_name=lambda name, type_, parent: type_ != "schema" or name == VERSION_SCHEMA,
            transaction_per_migration=False,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
