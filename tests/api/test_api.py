"""The admin API through Litestar's test client, on a fresh migrated database per test.

Dead letters are made the way the worker leaves them (``tests.ledger.test_redrive.dead_job``);
``test_api_http.py`` drives a real ``tierbox api`` process over data from really failing jobs.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any, get_args

import msgspec
import psycopg
import pytest
from litestar.testing import TestClient

from outbox.config import Settings
from outbox.schema import DEAD_LETTER_REASONS, JOB_STATUSES
from tests.factories import dead_job
from tierbox.api.app import create_app
from tierbox.api.auth import ApiToken, hash_token
from tierbox.api.config import ApiConfig
from tierbox.ops.models import DeadLetterReason, JobStatus

READ_SECRET = "read-secret-for-tests"
OPERATE_SECRET = "operate-secret-for-tests"
TOKENS = (ApiToken("grafana", "read", hash_token(READ_SECRET)), ApiToken("alice", "operate", hash_token(OPERATE_SECRET)))
READ = {"Authorization": f"Bearer {READ_SECRET}"}
OPERATE = {"Authorization": f"Bearer {OPERATE_SECRET}"}



#: A job id no test database holds; fixed, so every xdist worker collects the same test ids.
NO_SUCH_JOB = uuid.UUID("00000000-0000-4000-8000-00000000dead")

def make_client(db_url: str, prefix: str = "", **config: Any) -> TestClient[Any]:
    """A test client on ``db_url`` with the test tokens (or ``config`` overrides)."""
    settings = Settings(database_url=db_url, queue_prefix=prefix or f"t{uuid.uuid4().hex[:8]}.")
    return TestClient(create_app(settings, ApiConfig(**{"tokens": TOKENS, **config})))


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient[Any]]:
    """The API on this test's own database, RabbitMQ queues of a prefix nobody declared."""
    with make_client(db_url) as c:
        yield c


def q(db_url: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    """Rows of one committed query."""
    with psycopg.connect(db_url) as conn:
        return conn.execute(sql, params).fetchall()


def dead(db_url: str, n: int = 1, **kw: Any) -> list[uuid.UUID]:
    """``n`` committed dead jobs."""
    with psycopg.connect(db_url) as conn:
        return [dead_job(conn, **kw) for _ in range(n)]


def audit_rows(db_url: str) -> list[tuple[Any, ...]]:
    """(actor, actor_kind, action, job_ids, client_addr, result) of every audit row, in order."""
    return q(db_url, "SELECT actor, actor_kind, action, job_ids, client_addr, result FROM outbox.admin_audit "
                     "ORDER BY id")


def assert_error(response: Any, status: int, code: str, field: str | None = None) -> None:
    """The response is our JSON error shape with this status, code and field."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}, body
    assert body["error"]["code"] == code, body
    assert body["error"]["field"] == field, body
    assert body["error"]["message"]


def test_literals_match_the_schema() -> None:
    assert get_args(DeadLetterReason) == DEAD_LETTER_REASONS
    assert get_args(JobStatus) == JOB_STATUSES


def test_every_status_maps_to_a_documented_code() -> None:
    import re
    from pathlib import Path

    from tierbox.ops.errors import CODES, RequestError

    table = (Path(__file__).parents[2] / "docs" / "admin-api.md").read_text()
    documented = {int(status): set(re.findall(r"`([a-z_]+)`", codes))
                  for status, codes in re.findall(r"^\| (\d{3}) \| ([^|]+) \|", table, re.MULTILINE)}
    assert {s: c for s, c in CODES.items() if c not in documented.get(s, set())} == {}
    assert RequestError(400, "x").code == "malformed_json"


# --- auth ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path"), [
    ("get", "/admin/dlq"), ("get", "/admin/dlq/by-tier"), ("get", f"/admin/dlq/{NO_SUCH_JOB}"),
    ("get", "/admin/jobs"), ("get", "/admin/tiers"), ("get", "/metrics"),
    ("post", f"/admin/dlq/{NO_SUCH_JOB}/redrive"), ("post", "/admin/dlq/redrive"),
    ("post", f"/admin/dlq/{NO_SUCH_JOB}/discard"),
])
def test_every_admin_route_needs_a_token(client: TestClient[Any], method: str, path: str) -> None:
    none = getattr(client, method)(path)
    assert_error(none, 401, "unauthenticated")
    assert none.headers["www-authenticate"].startswith("Bearer")
    wrong = getattr(client, method)(path, headers={"Authorization": "Bearer not-a-token"})
    assert_error(wrong, 401, "invalid_token")
    basic = getattr(client, method)(path, headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert_error(basic, 401, "unauthenticated")


@pytest.mark.parametrize("path", ["/admin/dlq/redrive", f"/admin/dlq/{NO_SUCH_JOB}/redrive",
                                  f"/admin/dlq/{NO_SUCH_JOB}/discard"])
def test_read_token_cannot_operate(client: TestClient[Any], db_url: str, path: str) -> None:
    r = client.post(path, json={"reason": "x"}, headers=READ)
    assert_error(r, 403, "forbidden")
    assert "grafana" in r.json()["error"]["message"]
    assert audit_rows(db_url) == []


def test_health_endpoints_need_no_token(client: TestClient[Any]) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "postgres": None, "rabbitmq": None}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert client.get("/schema/openapi.json").status_code == 200


def test_readyz_names_what_is_down(db_url: str) -> None:
    with make_client(db_url.replace(":5432", ":1"), prefix="t.") as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["status"] == "unavailable" and r.json()["postgres"] and r.json()["rabbitmq"] is None


def test_api_refuses_to_start_without_tokens() -> None:
    from outbox.errors import ConfigError

    with pytest.raises(ConfigError, match="no API token"):
        ApiConfig()
    with pytest.raises(ConfigError, match=r"127\.0\.0\.1"):
        ApiConfig(insecure_dev=True, host="0.0.0.0")


def test_insecure_dev_lets_everyone_in_as_insecure_dev(db_url: str) -> None:
    [job] = dead(db_url)
    with make_client(db_url, tokens=(), insecure_dev=True) as c:
        assert c.post(f"/admin/dlq/{job}/discard").status_code == 200
    assert audit_rows(db_url) == [("insecure-dev", "insecure_dev", "discard", [job], "testclient", "ok")]


# --- reading dead letters ---------------------------------------------------------------------------

def test_list_show_and_count_dead_letters(client: TestClient[Any], db_url: str) -> None:
    invoices = dead(db_url, 2)
    [webhook] = dead(db_url, task="sample.webhook", reason="non_retryable")
    page = client.get("/admin/dlq", headers=READ).json()
    assert [i["job_id"] for i in page["items"]] == [str(j) for j in [webhook, *reversed(invoices)]]
    assert page["next_cursor"] is None
    only = client.get("/admin/dlq", params={"tier": "high", "reason": "non_retryable"}, headers=READ).json()
    assert [i["job_id"] for i in only["items"]] == [str(webhook)]
    assert client.get("/admin/dlq", params={"task": "nope"}, headers=READ).json()["items"] == []
    counts = client.get("/admin/dlq/by-tier", headers=READ).json()
    assert counts == [{"tier": "high", "reason": "non_retryable", "count": 1},
                      {"tier": "normal", "reason": "failed", "count": 2}]
    one = client.get(f"/admin/dlq/{webhook}", headers=READ).json()
    assert one["dead_letter"]["task"] == "sample.webhook" and one["dead_letter"]["state"] == "open"
    assert one["dead_letter"]["error_type"] == "Reject"  # the handler raised Reject: one attempt, no retry
    assert [(a["attempt"], a["outcome"], a["error_type"]) for a in one["attempts"]] == [(1, "failed", "Reject")]
    assert_error(client.get(f"/admin/dlq/{uuid.uuid4()}", headers=READ), 404, "not_found")


def test_payloads_are_redacted(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    payload = '{"args": [1], "kwargs": {"password": "hunter2", "user": {"api_key": "k", "name": "bo"}, ' \
              '"auth": "x", "author": "kept", "body": "' + "x" * 5000 + '"}}'
    q(db_url, "UPDATE outbox.dead_letters SET payload = %s::jsonb, headers = '{\"Authorization\": \"Bearer z\"}' "
              "WHERE job_id = %s RETURNING 1", payload, job)
    item = client.get(f"/admin/dlq/{job}", headers=READ).json()["dead_letter"]
    assert item["payload"] == {"args": [1], "kwargs": {"password": "***", "user": {"api_key": "***", "name": "bo"},
                                                       "auth": "***", "author": "kept", "body": "<5000 bytes>"}}
    assert item["headers"] == {"Authorization": "***"}
    assert "hunter2" not in client.get("/admin/dlq", headers=READ).text
    assert "hunter2" not in client.get(f"/admin/jobs/{job}", headers=READ).text


def test_a_task_redaction_hook_runs_before_the_defaults(client: TestClient[Any], db_url: str) -> None:
    from tierbox.ops.redaction import REDACTORS, redactor

    @redactor("sample.invoice")
    def _hide_args(payload: Any) -> Any:
        payload["args"] = ["<hidden>"]
        return payload

    try:
        [job] = dead(db_url)
        item = client.get(f"/admin/dlq/{job}", headers=READ).json()["dead_letter"]
        assert item["payload"] == {"args": ["<hidden>"], "kwargs": {"note": "x"}}
        assert q(db_url, "SELECT payload FROM outbox.dead_letters WHERE job_id = %s", job)[0][0]["args"] == [1]
    finally:
        REDACTORS.pop("sample.invoice", None)


def test_keyset_pagination_is_stable_under_inserts(client: TestClient[Any], db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        original = [dead_job(conn, failed_ago=f"{m} minutes") for m in range(1, 8)]  # newest first
    seen: list[str] = []
    cursor = None
    for page_number in range(5):
        params: dict[str, Any] = {"limit": 3, **({"cursor": cursor} if cursor else {})}
        page = client.get("/admin/dlq", params=params, headers=READ).json()
        seen += [i["job_id"] for i in page["items"]]
        if page_number == 0:  # failures arriving while an operator pages through
            dead(db_url, 2)
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [str(j) for j in original]
    assert_error(client.get("/admin/dlq", params={"cursor": "garbage!"}, headers=READ), 422, "invalid", "cursor")


def test_state_filter(client: TestClient[Any], db_url: str) -> None:
    a, b, c = dead(db_url, 3)
    client.post(f"/admin/dlq/{a}/redrive", headers=OPERATE)
    client.post(f"/admin/dlq/{b}/discard", headers=OPERATE)

    def ids(state: str) -> set[str]:
        return {i["job_id"] for i in client.get("/admin/dlq", params={"state": state}, headers=READ).json()["items"]}

    assert ids("open") == {str(c)} and ids("redriven") == {str(a)} and ids("discarded") == {str(b)}
    assert ids("all") == {str(a), str(b), str(c)}


# --- acting on dead letters ---------------------------------------------------------------------------

def test_redrive_records_lineage_and_audit_then_refuses_a_second_with_409(client: TestClient[Any],
                                                                         db_url: str) -> None:
    [job] = dead(db_url)
    r = client.post(f"/admin/dlq/{job}/redrive", json={"tier": "low", "reason": "provider back"}, headers=OPERATE)
    assert r.status_code == 200, r.text
    new = uuid.UUID(r.json()["new_job_id"])
    assert q(db_url, "SELECT tier, redrive_of, redrive_count FROM outbox.jobs WHERE id = %s", new) == [("low", job, 1)]
    assert q(db_url, "SELECT redriven_by, redrive_reason, new_job_id FROM outbox.dead_letters WHERE job_id = %s",
             job) == [("alice", "provider back", new)]
    again = client.post(f"/admin/dlq/{job}/redrive", headers=OPERATE)
    assert_error(again, 409, "conflict")
    assert "already redriven" in again.json()["error"]["message"]
    assert audit_rows(db_url) == [("alice", "token", "redrive", [job], "testclient", "ok"),
                                  ("alice", "token", "redrive", [job], "testclient", "refused")]
    detail = q(db_url, "SELECT detail FROM outbox.admin_audit ORDER BY id LIMIT 1")[0][0]
    assert detail == {"tier": "low", "reason": "provider back", "new_job_id": str(new)}


def test_redrive_and_discard_of_a_missing_dead_letter_is_404_and_audited(client: TestClient[Any],
                                                                         db_url: str) -> None:
    missing = uuid.uuid4()
    assert_error(client.post(f"/admin/dlq/{missing}/redrive", headers=OPERATE), 404, "not_found")
    assert_error(client.post(f"/admin/dlq/{missing}/discard", headers=OPERATE), 404, "not_found")
    assert [r[2:] for r in audit_rows(db_url)] == [("redrive", [missing], "testclient", "not_found"),
                                                   ("discard", [missing], "testclient", "not_found")]


def test_discard_then_redrive_is_409(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    r = client.post(f"/admin/dlq/{job}/discard", json={"reason": "customer cancelled"}, headers=OPERATE)
    assert r.json() == {"job_id": str(job), "discarded": True}
    assert q(db_url, "SELECT status FROM outbox.jobs WHERE id = %s", job) == [("discarded",)]
    assert_error(client.post(f"/admin/dlq/{job}/redrive", headers=OPERATE), 409, "conflict")
    assert_error(client.post(f"/admin/dlq/{job}/discard", headers=OPERATE), 409, "conflict")
    assert [r[5] for r in audit_rows(db_url)] == ["ok", "refused", "refused"]


def test_bulk_redrive_dry_run_then_for_real(client: TestClient[Any], db_url: str) -> None:
    outage = dead(db_url, 3, task="sample.webhook", failed_ago="30 minutes")
    dead(db_url, task="sample.webhook", failed_ago="3 hours")
    dead(db_url, task="sample.invoice", failed_ago="30 minutes")
    body: dict[str, Any] = {"reason": "outage 42", "filter": {"task": "sample.webhook", "since": "2000-01-01T00:00:00Z"},
                            "dry_run": True}
    body["filter"]["since"] = q(db_url, "SELECT now() - interval '1 hour'")[0][0].isoformat()
    dry = client.post("/admin/dlq/redrive", json=body, headers=OPERATE).json()
    assert dry == {"dry_run": True, "count": 3, "batches": 0, "redriven": []}
    assert audit_rows(db_url) == []  # counting changes nothing
    done = client.post("/admin/dlq/redrive", json={**body, "dry_run": False}, headers=OPERATE).json()
    assert done["count"] == 3 and done["batches"] == 1
    assert sorted(r["job_id"] for r in done["redriven"]) == sorted(str(j) for j in outage)
    [(action, job_ids, result)] = [(r[2], r[3], r[5]) for r in audit_rows(db_url)]
    assert action == "redrive_bulk" and sorted(job_ids) == sorted(outage) and result == "ok"
    assert client.post("/admin/dlq/redrive", json={**body, "dry_run": False}, headers=OPERATE).json()["count"] == 0


async def test_bulk_redrive_is_paced_in_separate_transactions(db_url: str) -> None:
    from tierbox.ops import dead_letters as dlq
    from tierbox.ops.audit import Actor
    from tierbox.ops.db import create_engine
    from tierbox.ops.models import BulkRedriveRequest

    dead(db_url, 5)
    slept: list[float] = []

    async def sleep(seconds: float) -> None:  # the pace, observed instead of waited
        slept.append(seconds)

    engine = create_engine(Settings(database_url=db_url))
    try:
        req = BulkRedriveRequest(reason="after outage", limit=4, rate_per_s=2)
        result = await dlq.redrive_bulk(engine, Actor("ops", "os_user", "here"), req, sleep=sleep)
    finally:
        await engine.dispose()
    assert (result.count, result.batches) == (4, 2)
    assert len(slept) == 1 and 0.5 < slept[0] <= 1.0  # one pause between the two batches
    assert [len(r[3]) for r in audit_rows(db_url)] == [2, 2]  # one audit row per batch transaction
    assert q(db_url, "SELECT count(*) FROM outbox.dead_letters WHERE redriven_at IS NULL") == [(1,)]


# --- bad input ----------------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "path", "kw", "status", "code", "field"), [
    ("get", "/admin/dlq/not-a-uuid", {}, 422, "invalid", "job_id"),
    ("get", "/admin/jobs/123", {}, 422, "invalid", "job_id"),
    ("post", "/admin/dlq/zzz/redrive", {}, 422, "invalid", "job_id"),
    ("get", "/admin/dlq?reason=bogus", {}, 422, "invalid", "reason"),
    ("get", "/admin/dlq?state=bogus", {}, 422, "invalid", "state"),
    ("get", "/admin/jobs?status=bogus", {}, 422, "invalid", "status"),
    ("get", "/admin/dlq?tier=nope", {}, 422, "invalid", "tier"),
    ("get", "/admin/dlq?limit=100000", {}, 422, "invalid", "limit"),
    ("get", "/admin/dlq?since=yesterday", {}, 422, "invalid", "since"),
    ("get", "/admin/dlq?task=" + "x" * 500, {}, 422, "invalid", "task"),
    ("post", "/admin/dlq/redrive", {"content": b"{not json", "headers": {"content-type": "application/json"}},
     400, "malformed_json", None),
    ("post", "/admin/dlq/redrive", {"json": {}}, 422, "invalid", "reason"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "x", "limit": 0}}, 422, "invalid", "limit"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "x", "filter": {"reason": "bogus"}}}, 422, "invalid",
     "filter.reason"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "x", "filter": {"tier": "nope"}}}, 422, "invalid",
     "filter.tier"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "x", "surprise": 1}}, 422, "invalid", "surprise"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "   "}}, 422, "invalid", "reason"),
    ("post", f"/admin/dlq/{NO_SUCH_JOB}/redrive", {"json": {"reset_attempts": False}}, 422, "invalid",
     "reset_attempts"),
    ("post", f"/admin/dlq/{NO_SUCH_JOB}/redrive", {"json": {"tier": "nope"}}, 422, "invalid", "tier"),
    ("post", "/admin/dlq/redrive", {"json": {"reason": "x" * 200_000}}, 413, "body_too_large", None),
    ("get", "/admin/nothing-here", {}, 404, "not_found", None),
])
def test_bad_input_is_a_json_error_naming_the_field(client: TestClient[Any], db_url: str, method: str, path: str,
                                                    kw: dict[str, Any], status: int, code: str,
                                                    field: str | None) -> None:
    headers = {**OPERATE, **kw.pop("headers", {})}
    assert_error(getattr(client, method)(path, headers=headers, **kw), status, code, field)
    assert audit_rows(db_url) == []


# --- jobs, tiers, metrics -------------------------------------------------------------------------------

def test_jobs_list_and_timeline(client: TestClient[Any], db_url: str) -> None:
    [job] = dead(db_url)
    new = client.post(f"/admin/dlq/{job}/redrive", json={"reason": "retry"}, headers=OPERATE).json()["new_job_id"]
    listed = client.get("/admin/jobs", params={"status": "dead"}, headers=READ).json()
    assert [j["id"] for j in listed["items"]] == [str(job)]
    assert [j["id"] for j in client.get("/admin/jobs", params={"limit": 1}, headers=READ).json()["items"]] == [new]
    detail = client.get(f"/admin/jobs/{job}", headers=READ).json()
    assert detail["job"]["status"] == "dead"
    events = [e["event"] for e in detail["timeline"]]
    # Four real failed attempts (the factory runs the job to its dead letter), then the dead letter and the
    # redrive; the dead letter and the finish share an instant, so either may come first.
    assert events[0] == "enqueued" and events[-1] == "redriven" and set(events[-3:-1]) == {"dead_lettered",
                                                                                        "finished_dead"}
    assert sorted(events[1:-3]) == ["attempt_failed"] * 4 + ["attempt_started"] * 4
    assert detail["timeline"][-1]["detail"]["new_job_id"] == new
    assert client.get(f"/admin/jobs/{new}", headers=READ).json()["job"]["redrive_of"] == str(job)
    assert_error(client.get(f"/admin/jobs/{uuid.uuid4()}", headers=READ), 404, "not_found")


def test_tiers_combine_the_view_and_the_broker(client: TestClient[Any], db_url: str) -> None:
    dead(db_url, 2)
    rows = client.get("/admin/tiers", headers=READ).json()
    assert [r["tier"] for r in rows] == ["critical", "calls", "high", "normal", "low", "bulk"]
    normal = next(r for r in rows if r["tier"] == "normal")
    assert normal["dead_5m"] == 2 and normal["broker_error"] is None
    assert normal["queue"].endswith("normal") and normal["queue_depth"] is None  # nobody declared this prefix


def test_metrics_are_prometheus_text(client: TestClient[Any], db_url: str) -> None:
    dead(db_url, 2)
    r = client.get("/metrics", headers=READ)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    text = r.text
    for line in ('tierbox_dlq_open{tier="normal"} 2.0', 'tierbox_outbox_pending{tier="critical"} 0.0',
                 "tierbox_broker_up 1.0", 'tierbox_jobs_outcomes_window{outcome="dead",tier="normal",window="5m"} 2.0'):
        assert line in text, text
    assert 'tierbox_pg_dead_tuples{table="jobs"}' in text and "tierbox_pg_oldest_xmin_age " in text
    # The wait quantiles of the tier whose jobs ran, the p99 (what the SLO is judged on) among them.
    waits = {line.split('quantile="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
             if line.startswith("tierbox_wait_seconds{") and 'tier="normal"' in line}
    assert set(waits) == {"0.5", "0.95", "0.99"}, text
    assert waits["0.99"] >= waits["0.95"] >= waits["0.5"] >= 0


# --- token configuration and redaction rules ------------------------------------------------------------

def test_tokens_from_env_and_file(tmp_path: Any) -> None:
    from outbox.errors import ConfigError
    from tierbox.api.auth import TokenStore, load_tokens, new_token, parse_tokens

    secret, line = new_token("ci", "operate")
    path = tmp_path / "tokens"
    path.write_text(f"# operators\n{line}  # added for the CI\n\n")
    tokens = load_tokens(f"grafana:read:{hash_token('g')}", str(path))
    assert [(t.name, t.scope) for t in tokens] == [("grafana", "read"), ("ci", "operate")]
    store = TokenStore(tokens)
    assert store.resolve(secret) is not None and store.resolve(secret).name == "ci"  # type: ignore[union-attr]
    assert store.resolve("g") is not None and store.resolve("nope") is None
    for bad, message in [("a:admin:" + "0" * 64, "scope"), ("a:read:secret", "64 hex"), ("a:read", "NAME:SCOPE"),
                         (f"a:read:{'0' * 64},a:operate:{'1' * 64}", "unique"), ("a b:read:" + "0" * 64, "name")]:
        with pytest.raises(ConfigError, match=message):
            parse_tokens(bad)
    with pytest.raises(ConfigError, match="TIERBOX_API_TOKENS_FILE"):
        load_tokens(None, str(tmp_path / "missing"))


def test_redaction_rules() -> None:
    from tierbox.ops.redaction import MAX_PAYLOAD_BYTES, redact

    assert redact({"args": [{"Password": "p", "card_number": "4242", "items": [{"secret_key": "s"}]}]}) == \
        {"args": [{"Password": "***", "card_number": "***", "items": [{"secret_key": "***"}]}]}
    assert redact({"passenger": "bo", "x-auth": "t"}) == {"passenger": "bo", "x-auth": "***"}
    huge = {"blob": ["y" * 100] * (MAX_PAYLOAD_BYTES // 100)}
    assert str(redact(huge)).startswith("<") and str(redact(huge)).endswith(" bytes>")
    assert redact(None) is None


def test_injection_strings_and_path_traversal_are_inert(client: TestClient[Any], db_url: str) -> None:
    injection = "x'; DROP TABLE outbox.jobs; --"
    r = client.get("/admin/dlq", params={"task": injection}, headers=READ)
    assert r.status_code == 200 and r.json()["items"] == []
    r = client.get("/admin/jobs", params={"task": injection, "tier": "high"}, headers=READ)
    assert r.status_code == 200
    assert q(db_url, "SELECT to_regclass('outbox.jobs') IS NOT NULL") == [(True,)]
    for path in ("/admin/dlq/..%2F..%2Fetc%2Fpasswd", "/admin/jobs/..%2Fschema"):
        r = client.get(path, headers=READ)
        assert r.status_code in (404, 422), (path, r.status_code)
        assert set(r.json()) == {"error"}
    r = client.post("/admin/tasks/x'%3B%20DROP%20TABLE%20outbox.pauses%3B--/pause", headers=OPERATE)
    assert r.status_code == 200  # a task name like any other: stored as text, never executed
    assert q(db_url, "SELECT name FROM outbox.pauses") == [("x'; DROP TABLE outbox.pauses;--",)]
    assert_error(client.get("/admin/pauses", headers={"Authorization": "Bearer ' OR 1=1 --"}), 401,
                 "invalid_token")
    assert q(db_url, "SELECT to_regclass('outbox.pauses') IS NOT NULL") == [(True,)]


def test_metrics_report_breakers_and_the_scheduler_leader_from_redis(db_url: str,
                                                                    service_urls: dict[str, str]) -> None:
    """The flow gauges come from Redis at scrape time: an open breaker reads 1, a held leader lock 1;
    with Redis down they are absent (never "closed" or "no leader") and tierbox_redis_up is 0."""
    import asyncio

    import redis as redis_lib

    from tests.flow.test_gate import make_task
    from tests.helpers import free_port
    from tierbox.flow.gate import Gate, connect

    prefix = f"t{uuid.uuid4().hex[:8]}."
    settings = Settings(database_url=db_url, queue_prefix=prefix, redis_url=service_urls["redis"])
    leader_key = f"{prefix}tierbox:scheduler:leader"

    def scrape(s: Settings) -> str:
        with TestClient(create_app(s, ApiConfig(tokens=TOKENS))) as c:
            return c.get("/metrics", headers=READ).text

    text = scrape(settings)
    assert "tierbox_redis_up 1.0" in text and "tierbox_scheduler_leader 0.0" in text
    assert "tierbox_breaker_open{" not in text  # no breaker has ever recorded a failure

    async def trip() -> None:
        client = connect(settings)
        try:
            gate = Gate(settings, client, None)
            for _ in range(5):  # the default policy opens at 5 failures
                await gate.record(make_task("charge", breaker="stripe"), ok=False)
            await gate.record(make_task("crm", breaker="crm"), ok=False)
        finally:
            await client.aclose()

    asyncio.run(trip())
    direct = redis_lib.Redis.from_url(service_urls["redis"])
    try:
        direct.set(leader_key, "host-a:123", px=30_000)
        text = scrape(settings)
        assert 'tierbox_breaker_open{breaker="stripe"} 1.0' in text
        assert 'tierbox_breaker_open{breaker="crm"} 0.0' in text
        assert "tierbox_scheduler_leader 1.0" in text
    finally:
        direct.delete(leader_key, *direct.keys(f"tierbox:{prefix}*"))
        direct.close()

    down = scrape(msgspec.structs.replace(settings, redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    assert "tierbox_redis_up 0.0" in down
    assert "tierbox_scheduler_leader " not in down and 'tierbox_breaker_open{' not in down


def test_scrapes_reuse_the_apps_redis_connection(db_url: str, service_urls: dict[str, str]) -> None:
    """/metrics reads breakers and the leader lock over the app's one Redis client: every scrape finds
    the same named connection, where each used to open and close two of its own."""
    import os

    import redis as redis_lib

    settings = Settings(database_url=db_url, queue_prefix=f"t{uuid.uuid4().hex[:8]}.",
                        redis_url=service_urls["redis"])
    name = f"tierbox-api:{os.getpid()}"
    direct = redis_lib.Redis.from_url(service_urls["redis"])
    seen: list[set[int]] = []
    try:
        with TestClient(create_app(settings, ApiConfig(tokens=TOKENS))) as c:
            for _ in range(10):
                assert "tierbox_redis_up 1.0" in c.get("/metrics", headers=READ).text
                seen.append({int(x["id"]) for x in direct.client_list() if x.get("name") == name})
        assert seen[0] and all(ids == seen[0] for ids in seen), seen
        assert not [x for x in direct.client_list() if x.get("name") == name]  # closed with the app
    finally:
        direct.close()
