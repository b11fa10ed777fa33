"""Time-ordered job ids: UUIDv7 (RFC 9562), the key that ``outbox.jobs`` is partitioned on.

A v7 id starts with the 48-bit Unix time in milliseconds (big-endian), then the version (7), 12
random bits, the variant (binary 10) and 62 more random bits. Ordered as uuids (Postgres compares
them bytewise), ids follow the clock: a day of jobs is one contiguous key range, so one partition
per UTC day holds exactly that day's jobs (docs/schema.md, "Partitions"), and new ids append to
the right edge of the primary key's index instead of dirtying random pages. Uniqueness is the
primary key's: 74 random bits per millisecond make a clash astronomically unlikely, and an
insert that clashed would fail, never overwrite.

``outbox.uuid7()`` (revision 0017) makes the same ids in SQL, for the job ids SQL functions make
(redrive, webhook delivery).
"""

from __future__ import annotations

import datetime as dt
import os
import time
import uuid

_VERSION = 0x7 << 76
_VARIANT = 0x2 << 62
_RAND_A = (1 << 12) - 1
_RAND_B = (1 << 62) - 1


def new_job_id(now_ms: int | None = None) -> uuid.UUID:
    """A new UUIDv7 job id for the current time (or for Unix time ``now_ms``, in milliseconds)."""
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits: 12 for rand_a, 62 for rand_b (6 unused)
    value = ((ms & 0xFFFF_FFFF_FFFF) << 80) | _VERSION | (((rand >> 62) & _RAND_A) << 64) | _VARIANT \
        | (rand & _RAND_B)
    return uuid.UUID(int=value)


def floor_id(at: dt.datetime) -> uuid.UUID:
    """The smallest v7 id of the millisecond ``at`` (aware): 48-bit ms, then zeros (a partition bound)."""
    ms = int(at.timestamp() * 1000)
    return uuid.UUID(int=(ms & 0xFFFF_FFFF_FFFF) << 80)


def id_time(job_id: uuid.UUID) -> dt.datetime:
    """The time a v7 id was made (UTC, millisecond precision); meaningless for other versions."""
    return dt.datetime.fromtimestamp((job_id.int >> 80) / 1000, dt.UTC)
