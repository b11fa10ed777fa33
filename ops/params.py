"""Input checks the API and the CLI share: job ids and tier names, refused with a 422 naming the field."""

from __future__ import annotations

import uuid

from outbox.config import Settings
from tierbox.ops.errors import invalid


def job_id(value: str) -> uuid.UUID:
    """``value`` as a UUID; 422 naming ``job_id`` otherwise."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise invalid("job_id", f"not a UUID: {value[:64]!r}") from None


def tier(settings: Settings, value: str | None, field: str = "tier") -> str | None:
    """``value`` if it names a tier of the topology; 422 naming ``field`` otherwise."""
    if value is None or value in settings.topology.tiers:
        return value
    known = ", ".join(settings.topology.tiers)
    raise invalid(field, f"unknown tier {value[:64]!r}; one of {known}")
