"""The API's connection pool: one SQLAlchemy async engine per process (psycopg 3 underneath)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from outbox import _keepalive as keepalive
from outbox.config import Settings

#: Connections kept open; the admin API is low-traffic, and Postgres connections are dear.
POOL_SIZE = 4
POOL_OVERFLOW = 4


def create_engine(settings: Settings) -> AsyncEngine:
    """An engine on ``settings.database_url`` that checks connections before use (Postgres restarts)."""
    return keepalive.on_connect(create_async_engine(settings.sqlalchemy_url, pool_size=POOL_SIZE,
                                                    max_overflow=POOL_OVERFLOW, pool_pre_ping=True, pool_timeout=10))
