"""The wire contract: how a job's arguments and its AMQP message body are encoded.

Body: a msgspec JSON :class:`Envelope`, version ``v=1``. New fields always get
defaults so older workers keep decoding newer messages. Arguments are JSON
values (msgspec encodes datetimes, UUIDs, dataclasses and Structs to their
JSON forms; the handler receives those JSON forms, e.g. ISO strings).
The ledger (``outbox.jobs``) is the truth: a worker checks every delivery
against it, so the body carries only what is needed to run the job.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any

import msgspec

from outbox.errors import PayloadEncodeError, PayloadTooLargeError

ENVELOPE_VERSION = 1
CONTENT_TYPE = "application/json"

#: AMQP header names (all prefixed so they never clash with an app's own headers).
HEADER_TASK = "x-tierbox-task"
HEADER_TIER = "x-tierbox-tier"
HEADER_ATTEMPT = "x-tierbox-attempt"
HEADER_ENQUEUED_AT = "x-tierbox-enqueued-at"

_encoder = msgspec.json.Encoder()

# A JSON "\u0000" escape (NUL), not the text "\\u0000" of an escaped backslash followed by "u0000".
_JSON_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


class Envelope(msgspec.Struct, frozen=True, kw_only=True):
    """The message body. ``payload`` is ``{"args": [...], "kwargs": {...}}``."""

    v: int = ENVELOPE_VERSION
    id: uuid.UUID
    task: str
    tier: str
    payload: msgspec.Raw = msgspec.Raw(b'{"args":[],"kwargs":{}}')
    enqueued_at: dt.datetime | None = None


class Payload(msgspec.Struct, frozen=True):
    """A job's arguments as stored in ``outbox.jobs.payload``."""

    args: list[Any] = []
    kwargs: dict[str, Any] = {}


_envelope_decoder = msgspec.json.Decoder(Envelope)
_payload_decoder = msgspec.json.Decoder(Payload)


def encode_payload(args: Any, kwargs: Any, max_bytes: int) -> str:
    """args+kwargs as the JSON text stored in the ledger; raises typed errors naming the field."""
    if not isinstance(args, (list, tuple)):
        raise PayloadEncodeError("args", f"must be a list or tuple, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise PayloadEncodeError("kwargs", f"must be a dict, got {type(kwargs).__name__}")
    for key in kwargs:
        if not isinstance(key, str):
            raise PayloadEncodeError("kwargs", f"keys must be str, got {type(key).__name__} {key!r:.40}")
    for field, value in (("args", list(args)), ("kwargs", kwargs)):
        try:
            encoded = _encoder.encode(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise PayloadEncodeError(field, f"cannot be encoded as JSON: {exc}") from exc
        if _JSON_NUL.search(encoded):
            raise PayloadEncodeError(field, "strings must not contain NUL characters (Postgres jsonb refuses them)")
    body = _encoder.encode({"args": list(args), "kwargs": kwargs})
    if b"null" in body:  # msgspec writes NaN and infinities as null; refuse rather than change the data
        for name, part in (("args", list(args)), ("kwargs", kwargs)):
            if _has_non_finite(part):
                raise PayloadEncodeError(name, "NaN and infinite floats have no JSON form")
    if len(body) > max_bytes:
        raise PayloadTooLargeError("args", f"encoded payload is {len(body)} bytes, above the limit of {max_bytes}")
    return body.decode()


def _has_non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return value != value or value in (float("inf"), float("-inf"))
    if isinstance(value, dict):
        return any(_has_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_non_finite(v) for v in value)
    return False


def encode_headers(headers: Any) -> str:
    """User headers as JSON text; must be a flat dict of str to str/int/float/bool."""
    if headers is None:
        return "{}"
    if not isinstance(headers, dict):
        raise PayloadEncodeError("headers", f"must be a dict, got {type(headers).__name__}")
    for key, value in headers.items():
        if not isinstance(key, str) or not isinstance(value, (str, int, float, bool)):
            raise PayloadEncodeError("headers", f"entry {key!r:.40} must map str to str/int/float/bool")
    try:
        body = _encoder.encode(headers)
    except (TypeError, ValueError, OverflowError) as exc:
        raise PayloadEncodeError("headers", f"cannot be encoded as JSON: {exc}") from exc
    if _JSON_NUL.search(body):
        raise PayloadEncodeError("headers", "must not contain NUL characters (Postgres jsonb refuses them)")
    return body.decode()


def encode_envelope(job_id: uuid.UUID, task: str, tier: str, payload_json: str | bytes,
                    enqueued_at: dt.datetime | None) -> bytes:
    """The AMQP body for a job, embedding the stored payload JSON without re-encoding it."""
    raw = payload_json.encode() if isinstance(payload_json, str) else payload_json
    return _encoder.encode(
        Envelope(id=job_id, task=task, tier=tier, payload=msgspec.Raw(raw), enqueued_at=enqueued_at)
    )


def decode_envelope(body: bytes) -> Envelope:
    """Decode an AMQP body; raises ``msgspec.DecodeError`` (or ValidationError) on garbage."""
    return _envelope_decoder.decode(body)


def decode_payload(raw: bytes | msgspec.Raw) -> Payload:
    """The args/kwargs of an envelope's payload."""
    return _payload_decoder.decode(bytes(raw))


def decode_headers(text: str | bytes | None) -> dict[str, Any]:
    """Stored headers JSON back to a dict (empty for None)."""
    if not text:
        return {}
    value = msgspec.json.decode(text.encode() if isinstance(text, str) else text)
    return value if isinstance(value, dict) else {}
