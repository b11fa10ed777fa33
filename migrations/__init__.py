"""Alembic migrations of the ``outbox`` schema, runnable from code.

They keep their own version table, ``outbox.alembic_version``, so an
application's own alembic history is never touched. An application runs them
from its deploy step with ``tierbox migrate`` or :func:`upgrade`.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

VERSION_TABLE = "alembic_version"
VERSION_SCHEMA = "outbox"
SCRIPT_LOCATION = str(Path(__file__).resolve().parent)


def alembic_config(database_url: str) -> Config:
    """An alembic Config for ``database_url`` (any libpq URL; the psycopg 3 driver is used)."""
    cfg = Config()
    cfg.set_main_option("script_location", SCRIPT_LOCATION)
    _, _, rest = database_url.partition("://")
    cfg.set_main_option("sqlalchemy.url", f"postgresql+psycopg://{rest}".replace("%", "%%"))
    return cfg


def upgrade(database_url: str, revision: str = "head", partition_days_ahead: int | None = None) -> list[str]:
    """Upgrade the outbox schema to ``revision`` (default: the latest), then create the job-history
    day partitions missing up to ``partition_days_ahead`` days ahead (revision 0017 and newer; default
    :data:`outbox._partitions.DAYS_AHEAD`); returns the names of the partitions created."""
    import psycopg

    from outbox import _partitions

    command.upgrade(alembic_config(database_url), revision)
    days = _partitions.DAYS_AHEAD if partition_days_ahead is None else partition_days_ahead
    with psycopg.connect(database_url) as conn:
        return _partitions.ensure(conn, days)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the outbox schema to ``revision`` (``base`` drops everything)."""
    command.downgrade(alembic_config(database_url), revision)
