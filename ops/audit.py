"""``outbox.admin_audit``: who did what to which jobs, from where, with what result.

:func:`record` runs on the connection of the change it records, so the row
and the change commit or roll back together.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from collections.abc import Iterable
from typing import Any

import msgspec

from outbox._sql import run_async
from tierbox.api.auth import Principal
from tierbox.ops import queries


class Actor(msgspec.Struct, frozen=True):
    """Who acts: a token's name (API) or the OS user (CLI), and from which address."""

    name: str
    kind: str
    address: str | None = None

    @classmethod
    def of(cls, principal: Principal, address: str | None) -> Actor:
        """The actor behind an API request."""
        return cls(principal.name, principal.kind, address)

    @classmethod
    def os_user(cls) -> Actor:
        """The actor behind a CLI command: the OS user on this host."""
        return cls(getpass.getuser(), "os_user", f"cli@{socket.gethostname()}")


async def record(conn: Any, actor: Actor, action: str, job_ids: Iterable[uuid.UUID | str], result: str,
                 detail: dict[str, Any] | None = None) -> int:
    """Insert one audit row on ``conn`` (the caller's transaction); returns its id."""
    rows = await run_async(conn, queries.AUDIT, {
        "actor": actor.name, "actor_kind": actor.kind, "action": action,
        "job_ids": [str(j) for j in job_ids], "client_addr": actor.address, "result": result,
        "detail": msgspec.json.encode(detail or {}).decode(),
    })
    return int(rows[0].id)
