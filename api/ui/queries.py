"""The few statements only the dashboard runs; each is bounded by an index or a small table."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any, NamedTuple

from outbox._sql import Statement


class AuditRow(NamedTuple):
    """``AUDIT_RECENT``: one row of ``outbox.admin_audit``."""

    id: int
    at: dt.datetime
    actor: str
    actor_kind: str
    action: str
    job_ids: list[uuid.UUID]
    client_addr: str | None
    result: str
    detail: dict[str, Any]


# The latest audit rows, newest first (a backward walk of the primary key: LIMIT rows read).
AUDIT_RECENT = Statement("ui.audit_recent", """
SELECT id, at, actor, actor_kind, action, job_ids, client_addr, result, detail
FROM outbox.admin_audit ORDER BY id DESC LIMIT :limit
""", row=AuditRow)
