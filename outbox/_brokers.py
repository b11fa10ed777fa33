"""Connect to the first reachable RabbitMQ node of several: broker failover for every Tierbox process.

``TIERBOX_AMQP_URL`` may name several nodes of one cluster, comma-separated
(``amqp://u:p@10.0.0.1:5672/,amqp://u:p@10.0.0.2:5672/``; a comma inside a
password must be written ``%2C``). :func:`connect` tries them in turn and
returns the first connection that opens. Each call starts one address after
the one the previous call of this process got, so a process that lost its
node tries another node first, and processes started together spread over the
nodes instead of all landing on the first. Every process already reconnects
through this function after a connection loss (with its own back-off), so
failover is that reconnection finding the next node.

This module imports nothing of Tierbox's (it is used by ``outbox`` and the
processes alike).
"""

from __future__ import annotations

import random
from typing import Any
from urllib.parse import urlsplit

import aio_pika
from aio_pika.abc import AbstractConnection

#: Seconds one address gets to open a connection before the next is tried, unless the caller says.
#: A node that is down refuses at once; this bounds one that black-holes the connection.
DEFAULT_ATTEMPT_TIMEOUT_S = 10.0

# Per address list: index of the address the next call tries first (random start: spreads processes).
_next: dict[tuple[str, ...], int] = {}


class BrokersUnreachableError(ConnectionError):
    """No address of ``TIERBOX_AMQP_URL`` accepted a connection; ``errors`` says why, per address."""

    def __init__(self, errors: list[tuple[str, BaseException]]) -> None:
        self.errors = errors
        tried = "; ".join(f"{address}: {type(exc).__name__}: {exc}" for address, exc in errors)
        super().__init__(f"no RabbitMQ node of {len(errors)} tried accepted a connection ({tried})")


def split_urls(value: str) -> list[str]:
    """The AMQP URLs in ``value`` (comma-separated; blanks around commas and empty items ignored)."""
    return [part.strip() for part in value.split(",") if part.strip()]


def address(url: str) -> str:
    """``host:port`` of ``url``, for logs and errors (never the credentials)."""
    parts = urlsplit(url)
    return f"{parts.hostname}:{parts.port or (5671 if parts.scheme == 'amqps' else 5672)}"


def order(urls: list[str]) -> list[str]:
    """The order the next :func:`connect` tries ``urls`` in: a rotation starting after the last one used."""
    key = tuple(urls)
    start = _next.setdefault(key, random.randrange(len(urls))) % len(urls)
    return urls[start:] + urls[:start]


async def connect(urls: str, *, timeout: float | None = None,  # noqa: ASYNC109 - per attempt, as aio_pika.connect
                  **kwargs: Any) -> AbstractConnection:
    """The first connection that opens among the comma-separated ``urls``, tried in rotating order.

    ``timeout`` bounds each attempt (default :data:`DEFAULT_ATTEMPT_TIMEOUT_S`); ``kwargs`` go to
    :func:`aio_pika.connect`. Raises :class:`BrokersUnreachableError` naming every address tried and its
    error when none opens.
    """
    candidates = split_urls(urls)
    if not candidates:
        raise ValueError("no AMQP URL given")
    errors: list[tuple[str, BaseException]] = []
    for url in order(candidates):
        try:
            connection: AbstractConnection = await aio_pika.connect(
                url, timeout=DEFAULT_ATTEMPT_TIMEOUT_S if timeout is None else timeout, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any failure means: try the next node
            errors.append((address(url), exc))
            continue
        # The next call (a reconnection after this node is lost, or another connection of this
        # process) starts at the following node.
        _next[tuple(candidates)] = candidates.index(url) + 1
        return connection
    raise BrokersUnreachableError(errors)
