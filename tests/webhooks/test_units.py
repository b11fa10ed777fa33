"""The delivery's pure parts: Retry-After, the retry hint, address pinning, the announced body, signing."""

from __future__ import annotations

import datetime as dt
import ipaddress
import uuid

import pytest
from standardwebhooks.webhooks import Webhook as Verifier

import outbox
from outbox import webhooks
from tests.webhooks.conftest import NEW_SECRET, OLD_SECRET, signed_by_hand
from tierbox.webhooks import deliver, queries, signing, transport
from tierbox.workers.outcomes import retry_delay_s

NOW = dt.datetime(2026, 12, 1, 20, 0, tzinfo=dt.UTC)
TASK = deliver.TASK


@pytest.mark.parametrize(("header", "seconds"), [
    ("3", 3.0), (" 120 ", 120.0), ("Tue, 01 Dec 2026 20:00:30 GMT", 30.0), ("Tue, 01 Dec 2026 19:00:00 GMT", 0.0),
    ("soon", None), ("", None), (None, None), ("-5", None),
], ids=["seconds", "spaces", "date", "past-date", "garbage", "empty", "absent", "negative"])
def test_retry_after_is_read_as_seconds(header: str | None, seconds: float | None) -> None:
    assert deliver.retry_after_seconds(header, NOW) == seconds


def test_the_retry_hint_is_a_floor_capped_by_the_tasks_longest_backoff() -> None:
    assert all(0 <= retry_delay_s(TASK, 1) <= webhooks.DELIVERY_BACKOFF_S for _ in range(200))
    hinted = deliver.DeliveryError("busy", retry_after_s=7.0)
    assert all(7.0 <= retry_delay_s(TASK, 1, hinted) <= 7.0 + 1e-9 for _ in range(50))
    huge = deliver.DeliveryError("busy", retry_after_s=86400.0)
    assert retry_delay_s(TASK, 1, huge) == webhooks.DELIVERY_BACKOFF_MAX_S
    assert 0 <= retry_delay_s(TASK, 1, deliver.DeliveryError("no hint")) <= webhooks.DELIVERY_BACKOFF_S


def test_the_request_goes_to_the_checked_address_with_the_urls_host() -> None:
    url, host, ext = transport.pinned("https://hooks.example.com:8443/a?b=1", ipaddress.ip_address("93.184.216.34"))
    assert (url, host, ext) == ("https://93.184.216.34:8443/a?b=1", "hooks.example.com:8443",
                                {"sni_hostname": "hooks.example.com"})
    url, host, ext = transport.pinned("http://[2001:db8::1]/x", ipaddress.ip_address("2001:db8::1"))
    assert (url, host, ext) == ("http://[2001:db8::1]/x", "[2001:db8::1]", {})


def announcement(outcome: str, **kw: object) -> queries.Announcement:
    base: dict[str, object] = dict(
        job_id=uuid.UUID(int=7), task="t.x", tier="high", outcome=outcome, attempts=2, enqueued_at=NOW,
        finished_at=NOW + dt.timedelta(seconds=3), last_error=None, error_type=None, url="https://h/x",
        secret_name="crm", include_result=False, result=None, max_retries=10, breaker_skips=0)
    base.update(kw)
    return queries.Announcement(**base)  # type: ignore[arg-type]


def test_the_body_says_what_happened_and_redacts_like_the_admin_api() -> None:
    ok = deliver.body(announcement("succeeded", include_result=True, result={"n": 1, "api_token": "t0k"}))
    assert ok["type"] == "job.succeeded" and ok["timestamp"] == "2026-12-01T20:00:03+00:00"
    assert ok["data"]["result"] == {"n": 1, "api_token": "***"} and ok["data"]["error"] is None
    dead = deliver.body(announcement("dead", include_result=True, result={"n": 1}, last_error="x" * 900,
                                     error_type="KeyError"))
    assert "result" not in dead["data"] and dead["data"]["error"]["type"] == "KeyError"
    assert len(dead["data"]["error"]["message"]) <= deliver.ERROR_MESSAGE_CHARS
    assert deliver.body(announcement("expired", last_error="expired before it was published"))["data"]["error"] == {
        "type": None, "message": "expired before it was published"}


def test_every_secret_value_signs_and_a_missing_one_is_a_clear_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TIERBOX_WEBHOOK_SECRET_CRM", f"{OLD_SECRET}  {NEW_SECRET}")
    values = signing.secret_values("crm")
    at = dt.datetime.now(dt.UTC)
    header = signing.signature(values, "msg_1", at, '{"a":1}', "TIERBOX_WEBHOOK_SECRET_CRM")
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": header}
    for secret in (OLD_SECRET, NEW_SECRET):
        assert Verifier(secret).verify('{"a":1}', headers) == {"a": 1}
    with pytest.raises(outbox.Reject, match="TIERBOX_WEBHOOK_SECRET_OTHER"):
        signing.secret_values("other")
    with pytest.raises(outbox.Reject) as err:
        signing.signature(["whsec_not*base64!"], "m", at, "{}", "TIERBOX_WEBHOOK_SECRET_X")
    assert "not*base64" not in str(err.value)


def test_the_signatures_match_the_specification_computed_by_hand() -> None:
    """Independent of the library that signs: each value of the secret gives the HMAC-SHA256 of
    ``{id}.{timestamp}.{body}`` under its base64-decoded key, in the order the values are configured."""
    at = dt.datetime(2026, 12, 2, 3, 0, 7, 900_000, tzinfo=dt.UTC)  # sent as whole seconds
    body = '{"type":"job.succeeded","data":{"note":"caf\u00e9 \u2713"}}'
    header = signing.signature([OLD_SECRET, NEW_SECRET], "msg_abc", at, body, "TIERBOX_WEBHOOK_SECRET_CRM")
    expected = [signed_by_hand(s, "msg_abc", "1796180407", body.encode()) for s in (OLD_SECRET, NEW_SECRET)]
    assert int(at.timestamp()) == 1796180407
    assert header.split(" ") == expected
    # The hand computation can tell signatures apart: another id, time, body or key gives another MAC.
    assert signed_by_hand(OLD_SECRET, "msg_abd", "1796180407", body.encode()) not in header
    assert signed_by_hand(OLD_SECRET, "msg_abc", "1796180408", body.encode()) not in header
    assert signed_by_hand(OLD_SECRET, "msg_abc", "1796180407", body.encode() + b" ") not in header
    assert signed_by_hand(NEW_SECRET, "msg_abc", "1796180407", body.encode()) != expected[0]
