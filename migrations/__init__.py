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


def upgrade(database_url: str, revision: str = "head") -> None:
    """Upgrade the outbox schema to ``revision`` (default: the latest)."""
    command.upgrade(alembic_config(database_url), revision)


def downgrade(database_url: str, revision: str) -> None:
    """Downgrade the outbox schema to ``revision`` (``base`` drops everything)."""
    command.downgrade(alembic_config(database_url), revision)
