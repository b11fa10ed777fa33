"""outbox._fingerprint on real exceptions raised through real code paths (no database)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from typing import Any

import pytest

import outbox
from outbox._failure import ErrorInfo
from outbox._fingerprint import MAX_FRAMES, Fingerprint, attach, fingerprint, is_application_module, normalize

HERE = __name__


def caught(fn: Callable[..., Any], *args: Any) -> Exception:
    """The exception ``fn(*args)`` raises (with its traceback, as a worker catches it)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    raise AssertionError(f"{fn.__name__} did not raise")


def load_order(order_ref: Any) -> None:
    raise LookupError(f"order {order_ref} not found")


def load_invoice(order_ref: Any) -> None:
    # The same message as load_order, from another code path.
    raise LookupError(f"order {order_ref} not found")


def call_api(url: str) -> None:
    raise ConnectionError(f"GET {url} failed: connection refused")


def notify(email: str, at: str) -> None:
    raise ValueError(f"cannot mail {email} at {at}: mailbox 'full' for {email}")


def parse(blob: str) -> Any:
    return json.loads(blob)  # raises inside the stdlib: its frames are not the application's


def outer(order_ref: Any) -> None:
    load_order(order_ref)


def two_raises(which: int) -> None:
    if which == 1:
        raise KeyError("sku 1 missing")
    raise KeyError("sku 2 missing")  # another line of the same function: the same group


@pytest.mark.parametrize(("fn", "first", "second"), [
    (load_order, 123, 456),
    (load_order, uuid.UUID(int=1), uuid.uuid4()),
    (load_order, "'ACME-1'", "'Globex'"),
    (load_order, "0xdeadbeef", "0x1f"),
    (load_order, "9f86d081884c7d65", "2c26b46b68ffc68f"),
    (call_api, "https://shop.example/api/orders?id=1&token=abc", "https://shop.example/api/orders?id=77"),
])
def test_varying_parts_share_a_fingerprint(fn: Callable[..., Any], first: Any, second: Any) -> None:
    a, b = fingerprint(caught(fn, first)), fingerprint(caught(fn, second))
    assert str(caught(fn, first)) != str(caught(fn, second))
    assert a.digest == b.digest, (a, b)
    assert a.frames == (f"{HERE}:{fn.__name__}", f"{HERE}:caught")  # innermost first


def test_emails_and_timestamps_share_a_fingerprint() -> None:
    a = fingerprint(caught(notify, "ann@example.com", "2026-12-01T10:00:00Z"))
    b = fingerprint(caught(notify, "bob.smith+x@mail.example.org", "2025-01-31 23:59:59.123+02:00"))
    assert a == b
    assert a.message == "cannot mail <email> at <ts>: mailbox <str> for <email>"


def test_the_same_message_from_another_function_is_another_group() -> None:
    a, b = fingerprint(caught(load_order, 1)), fingerprint(caught(load_invoice, 1))
    assert a.message == b.message == "order <n> not found"
    assert a.digest != b.digest
    assert a.frames[0] == f"{HERE}:load_order" and b.frames[0] == f"{HERE}:load_invoice"


def test_a_different_type_is_another_group() -> None:
    lookup = caught(load_order, 1)
    other = caught(lambda: (_ for _ in ()).throw(KeyError("order 1 not found")))
    assert fingerprint(lookup).digest != fingerprint(other).digest


def test_frames_are_the_applications_innermost_without_line_numbers() -> None:
    nested = fingerprint(caught(outer, 5))
    assert nested.frames == (f"{HERE}:load_order", f"{HERE}:outer", f"{HERE}:caught")[:MAX_FRAMES]
    assert all(":" in f and not f.rsplit(":", 1)[1].isdigit() for f in nested.frames)
    # Two lines of one function: one group (an edit above the raise must not split it).
    assert fingerprint(caught(two_raises, 1)).digest == fingerprint(caught(two_raises, 2)).digest


def test_library_frames_are_skipped() -> None:
    fp = fingerprint(caught(parse, "{not json"))
    assert fp.frames[0] == f"{HERE}:parse"  # json.decoder's frames are not the application's
    assert not any(f.startswith(("json", "pytest", "_pytest", "pluggy")) for f in fp.frames)
    assert is_application_module("myapp.billing", "/srv/myapp/billing.py")
    assert not is_application_module("json.decoder", "/usr/lib/python3.11/json/decoder.py")
    assert not is_application_module("psycopg.cursor", "/venv/lib/python3.11/site-packages/psycopg/cursor.py")
    assert not is_application_module("outbox.testing", "/work/outbox/testing.py")
    assert not is_application_module("tierbox.workers.execute", "/work/workers/execute.py")


def test_an_explicit_fingerprint_wins() -> None:
    def refuse(n: int) -> None:
        raise outbox.Reject(f"vat id {n} invalid", fingerprint="vat-invalid")

    a, b = fingerprint(caught(refuse, 1)), fingerprint(caught(outer, 1))
    assert a.digest == "vat-invalid" and b.digest != "vat-invalid"
    assert a.message == "vat id <n> invalid"  # the evidence is still the normalised message
    exc = caught(load_order, 1)
    attach(exc, "from-ctx")
    assert fingerprint(exc).digest == "from-ctx"
    rejected = caught(refuse, 2)
    attach(rejected, "from-ctx")  # Reject's own fingerprint is kept
    assert fingerprint(rejected).digest == "vat-invalid"
    assert ErrorInfo.of(rejected).params()["fingerprint"] == "vat-invalid"


def test_error_info_carries_the_fingerprint() -> None:
    exc = caught(load_order, 42)
    params = ErrorInfo.of(exc).params()
    assert params["fingerprint"] == fingerprint(exc).digest
    assert params["normalized"] == "order <n> not found" and params["frames"] == [f"{HERE}:load_order", f"{HERE}:caught"]
    # A failure Tierbox describes itself (no exception) still gets a stable group.
    one, two = ErrorInfo("WorkerShutdown", "stopped after 3 s").params(), ErrorInfo("WorkerShutdown", "stopped after 9 s").params()
    assert one["fingerprint"] == two["fingerprint"] and isinstance(one["fingerprint"], str)


@pytest.mark.parametrize(("raw", "expected"), [
    ("order 123 not found", "order <n> not found"),
    ("job 3f2a0c1e-9b7d-4c55-8e21-0a1b2c3d4e5f is gone", "job <uuid> is gone"),
    ("POST https://x.example/v1/pay?amount=5&id=9 -> 503", "POST https://x.example/v<n>/pay?<query> -> <n>"),
    ("user \"ann\" (ann@example.com) at 2026-12-01 10:00:00", "user <str> (<email>) at <ts>"),
    ("object at 0x7f3a2b1c", "object at <hex>"),
])
def test_normalize(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_fingerprint_is_a_tuple() -> None:
    digest, message, frames = fingerprint(caught(load_order, 1))
    assert isinstance(fingerprint(caught(load_order, 1)), Fingerprint)
    assert len(digest) == 16 and int(digest, 16) >= 0 and message and frames
