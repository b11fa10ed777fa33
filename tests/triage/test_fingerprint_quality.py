"""The normalisation fixes bench/triage_quality.py called for (issue #14): real exceptions, real tracebacks, no database.

Each case is one the benchmark's generator produces: a cause whose messages differ only in values that
vary per job must keep one fingerprint; two causes that differ in what names the problem (a status
code, an errno, a root cause) must not share one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from outbox._fingerprint import MAX_CHAIN, chain, fingerprint, normalize

HERE = __name__


class CrmSyncError(Exception):
    """An application's wrapper exception."""


class PartnerApiError(Exception):
    """An application's error for a partner API's non-2xx answer."""


def caught(fn: Callable[..., Any], *args: Any) -> BaseException:
    """The exception ``fn(*args)`` raises, with its traceback (as a worker catches it)."""
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc
    raise AssertionError(f"{fn.__name__} did not raise")


def over_limit(amount: str, currency: str) -> None:
    raise ValueError(f"amount {amount} {currency} exceeds the limit")


def connect(address: str, after: str) -> None:
    raise TimeoutError(f"connect to {address} timed out after {after}")


def quota(key: str, reset: str) -> None:
    raise RuntimeError(f"quota exceeded for key {key} (reset at {reset})")


def partner(status: int, shipment: int) -> None:
    raise PartnerApiError(f"partner API returned HTTP {status} for shipment {shipment}")


def refused(errno: int, host: str) -> None:
    raise OSError(f"[Errno {errno}] cannot reach {host}")


def crm_call(failure: str, account: int) -> None:
    if failure == "reset":
        raise ConnectionResetError(104, f"Connection reset by peer (10.0.0.{account % 250}:443)")
    raise RuntimeError(f"Client error '429 Too Many Requests' for url 'https://crm.example/contacts/{account}'")


def sync_account(failure: str, account: int) -> None:
    try:
        crm_call(failure, account)
    except (ConnectionResetError, RuntimeError) as exc:
        raise CrmSyncError(f"CRM sync for account {account} failed") from exc


def sync_quietly(account: int) -> None:
    try:
        crm_call("reset", account)
    except ConnectionResetError:
        raise CrmSyncError(f"CRM sync for account {account} failed") from None


def sync_while_handling(account: int) -> None:
    try:
        crm_call("reset", account)
    except ConnectionResetError:
        raise CrmSyncError(f"CRM sync for account {account} failed")  # noqa: B904 - the implicit chain under test


@pytest.mark.parametrize(("fn", "first", "second"), [
    # Amounts with and without thousands separators, in varying currencies.
    (over_limit, ("12.50", "EUR"), ("1,234.50", "USD")),
    (over_limit, ("250", "GBP"), ("-3.00", "CHF")),
    # IPs, ports and durations in different units.
    (connect, ("10.0.3.17:443", "250ms"), ("192.168.1.2:8443", "1.5s")),
    (connect, ("10.0.3.17:443", "30 seconds"), ("10.9.9.9:443", "10000ms")),
    # API keys (prefixed, mixed case, with or without digits) and HTTP dates.
    (quota, ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "Tue, 01 Dec 2026 17:00:00 GMT"),
     ("sk-proj-q8Zr2LmN0pQ7sT1uV4wX9yBc", "Sat, 28 Feb 2026 03:04:05 GMT")),
    (quota, ("cus_HapqCjWzsOeNx", "2026-12-01T10:00:00Z"), ("cus_8fj2KLm3Nq7Rt0", "2026-01-31 23:59:59")),
])
def test_values_that_vary_per_job_share_a_fingerprint(fn: Callable[..., Any], first: tuple[Any, ...],
                                                      second: tuple[Any, ...]) -> None:
    a, b = caught(fn, *first), caught(fn, *second)
    assert str(a) != str(b)
    assert fingerprint(a).digest == fingerprint(b).digest, (fingerprint(a), fingerprint(b))


@pytest.mark.parametrize(("raw", "expected"), [
    ("amount 1,234.50 EUR exceeds limit 250 USD", "amount <amount> exceeds limit <amount>"),
    ("charged €12.50 and $1,000", "charged <amount> and <amount>"),
    ("timed out after 250ms, then 1.5 s, then 30 seconds", "timed out after <duration>, then <duration>, then <duration>"),
    ("connect to 10.0.3.17:5432 failed", "connect to <ip>:<n> failed"),
    ("reset at Tue, 01 Dec 2026 17:00:00 GMT", "reset at <ts>"),
    ("key sk-proj-AbCdEfGhIjKlMnOpQrStUvWx for req_8fj2Kabcdefgh", "key sk-proj-<id> for req_<id>"),
    ("request WuILiInxUgyk3 from q8Zr2LmN0pQ", "request <id> from <id>"),
    # Identifiers are not ids: snake_case, CamelCase with acronyms, camelCase.
    ("shipping_address missing in HTTPSConnectionPool via getUserById", "shipping_address missing in "
     "HTTPSConnectionPool via getUserById"),
    # A bare path's query string (urllib3 prints "url: /v1/charges?...").
    ("Max retries exceeded with url: /v1/charges?key=9&amount=1,234.50 (x)", "Max retries exceeded with url: "
     "/v<n>/charges?<query> (x)"),
    # Apostrophes open no quote; quoted values still become <str>.
    ("can't charge customer's card 'A-1' now", "can't charge customer's card <str> now"),
    # Status codes and errnos name the problem: kept, also inside a quoted status line.
    ("partner API returned HTTP 429 for shipment 7", "partner API returned HTTP 429 for shipment <n>"),
    ("Error code: 503 - status=502, status code 504", "Error code: 503 - status=502, status code 504"),
    ("Client error '429 Too Many Requests' for url 'https://x.example/a/1'",
     "Client error '429 Too Many Requests' for url <str>"),
    ("500 Internal Server Error: order 17", "500 Internal Server Error: order <n>"),
    ("[Errno 111] Connection refused; errno=110", "[Errno 111] Connection refused; errno=110"),
    # Not status codes: a number after an arrow, a number before lower-case words.
    ("POST https://x.example/v1/pay?amount=5 -> 503", "POST https://x.example/v<n>/pay?<query> -> <n>"),
    ("order 404 not found", "order <n> not found"),
    # A NUL in the message cannot forge a kept value.
    ("order \x00b\x00 7", "order b <n>"),
])
def test_normalize_quality(raw: str, expected: str) -> None:
    assert normalize(raw) == expected


def test_a_status_code_splits_one_code_path() -> None:
    unavailable, throttled = fingerprint(caught(partner, 503, 1)), fingerprint(caught(partner, 429, 2))
    assert unavailable.frames == throttled.frames  # the same code path ...
    assert unavailable.digest != throttled.digest  # ... and still two problems
    assert fingerprint(caught(partner, 503, 99)).digest == unavailable.digest


def test_an_errno_splits_one_code_path() -> None:
    assert fingerprint(caught(refused, 111, "'a'")).digest != fingerprint(caught(refused, 110, "'a'")).digest
    assert fingerprint(caught(refused, 111, "'a'")).digest == fingerprint(caught(refused, 111, "'b.example'")).digest


def test_a_wrapper_is_fingerprinted_with_its_root_cause() -> None:
    reset, throttled = caught(sync_account, "reset", 1), caught(sync_account, "429", 2)
    assert str(reset) == "CRM sync for account 1 failed" and type(reset) is type(throttled)
    a, b = fingerprint(reset), fingerprint(throttled)
    assert a.digest != b.digest  # one wrapper, one message, one code path: two root causes
    assert a.message == ("CRM sync for account <n> failed <- ConnectionResetError: [Errno 104] Connection reset by "
                         "peer (<ip>:<n>)")
    assert b.message == "CRM sync for account <n> failed <- RuntimeError: Client error '429 Too Many Requests' for url <str>"
    # The frames start where the failing call was made (the root's innermost), then where it was wrapped.
    assert a.frames == (f"{HERE}:crm_call", f"{HERE}:sync_account", f"{HERE}:caught")
    # The same root cause with other ids: the same group.
    assert fingerprint(caught(sync_account, "reset", 77)).digest == a.digest


def test_the_chain_follows_cause_then_unsuppressed_context() -> None:
    explicit, implicit, quiet = caught(sync_account, "reset", 1), caught(sync_while_handling, 1), caught(sync_quietly, 1)
    assert [type(e) for e in chain(explicit)] == [CrmSyncError, ConnectionResetError]
    assert [type(e) for e in chain(implicit)] == [CrmSyncError, ConnectionResetError]
    assert [type(e) for e in chain(quiet)] == [CrmSyncError]  # "from None": the wrapper alone
    assert fingerprint(quiet).message == "CRM sync for account <n> failed"
    assert fingerprint(implicit).message == fingerprint(explicit).message
    # A plain exception is its own chain, and its fingerprint is what it was before chains counted.
    plain = caught(partner, 503, 1)
    assert chain(plain) == [plain] and " <- " not in fingerprint(plain).message


def test_a_chain_is_bounded_and_cycles_end() -> None:
    a, b = ValueError("a 1"), KeyError("b 2")
    a.__context__, b.__context__ = b, a  # a cycle, as careless re-raising can build
    assert chain(a) == [a, b]
    assert fingerprint(a).message == "a <n> <- KeyError: <str>"
    deep: BaseException = ValueError("root")
    for n in range(3 * MAX_CHAIN):
        outer = RuntimeError(f"level {n}")
        outer.__cause__ = deep
        deep = outer
    assert len(chain(deep)) == MAX_CHAIN


def test_the_rules_hints_skip_only_rules_that_cannot_match() -> None:
    # Messages of every shape above, real exceptions' included: with and without the hints, one result.
    raising: list[tuple[Callable[..., Any], tuple[Any, ...]]] = [
        (over_limit, ("1,234.50", "USD")), (over_limit, ("€12", "")), (connect, ("10.0.3.17:443", "250ms")),
        (quota, ("sk-proj-AbCdEfGhIjKlMnOpQrStUvWx", "Tue, 01 Dec 2026 17:00:00 GMT")), (partner, (429, 7)),
        (refused, (111, "'db-1'")), (sync_account, ("reset", 5)), (sync_account, ("429", 5)),
    ]
    corpus = [str(caught(fn, *args)) for fn, args in raising] + [
        "job 3f2a0c1e-9b7d-4c55-8e21-0a1b2c3d4e5f at 2026-12-01 10:00:00 by ann@example.com",
        "GET https://x.example/a?b=1 and /v1/c?d=2 at 0x7f3a2b1c, digest 9f86d081884c7d65",
        "can't find \"ACME 1\" for cus_HapqCjWzsOeNx (req WuILiInxUgyk3) in 12:30:01",
    ]
    for message in corpus:
        assert normalize(message) == normalize(message, hints=False), message
