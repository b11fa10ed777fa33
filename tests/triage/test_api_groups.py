"""``/admin/failure-groups`` through Litestar's test client, on groups made by really failing handlers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from litestar.testing import TestClient

from tests.api.test_api import OPERATE, READ, assert_error, audit_rows, make_client, q
from tests.triage.test_group_actions import failed
from tests.triage.test_groups import charge, find_order

ACTIONS = ("redrive", "discard", "resolve", "ignore", "reopen")


@pytest.fixture
def client(db_url: str) -> Iterator[TestClient[Any]]:
    with make_client(db_url) as c:
        yield c


def test_list_and_show(client: TestClient[Any], db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2)
    other, _ = failed(db_url, charge, 1)
    listed = client.get("/admin/failure-groups", headers=READ)
    assert listed.status_code == 200, listed.text
    assert {g["group"]["fingerprint"] for g in listed.json()} == {fp, other}
    only = client.get("/admin/failure-groups", params={"task": "tests.triage.charge"}, headers=READ).json()
    assert [g["group"]["fingerprint"] for g in only] == [other]
    assert only[0]["verdict"]["cause"] == "provider outage" and only[0]["group"]["open_dead_letters"] == 1
    assert client.get("/admin/failure-groups", params={"status": "resolved"}, headers=READ).json() == []
    shown = client.get(f"/admin/failure-groups/{fp[:8]}", headers=READ)
    assert shown.status_code == 200, shown.text
    body = shown.json()
    assert body["group"]["fingerprint"] == fp and body["verdict"]["cause"] == "data error"
    assert body["evidence"]["jobs_retried"] == 2
    assert [s["job_id"] for s in body["sample_jobs"]] == [str(j) for j in jobs[::-1]]


@pytest.mark.parametrize("action", ACTIONS)
def test_a_read_token_cannot_act_and_no_token_cannot_read(client: TestClient[Any], db_url: str, action: str) -> None:
    fp, _ = failed(db_url, find_order, 1)
    assert_error(client.post(f"/admin/failure-groups/{fp}/{action}", headers=READ), 403, "forbidden")
    assert_error(client.post(f"/admin/failure-groups/{fp}/{action}"), 401, "unauthenticated")
    assert_error(client.get(f"/admin/failure-groups/{fp}"), 401, "unauthenticated")
    assert audit_rows(db_url) == []
    assert q(db_url, "SELECT count(*) FROM outbox.dead_letters WHERE redriven_at IS NOT NULL "
                     "OR discarded_at IS NOT NULL") == [(0,)]


def test_redrive_dry_run_then_for_real(client: TestClient[Any], db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2, 3)
    dry = client.post(f"/admin/failure-groups/{fp}/redrive", json={"dry_run": True, "tier": "low"}, headers=OPERATE)
    assert dry.status_code == 200, dry.text
    plan = dry.json()["plan"]
    assert dry.json()["dry_run"] and dry.json()["redriven"] == 0
    assert (plan["redrivable"], plan["by_tier"], plan["target_tier"]) == (3, {"high": 3}, "low")
    done = client.post(f"/admin/failure-groups/{fp}/redrive", json={"batch": 2, "rate": 100, "reason": "fixed"},
                       headers=OPERATE)
    assert done.status_code == 200, done.text
    assert (done.json()["redriven"], done.json()["remaining"], done.json()["batches"]) == (3, 0, 2)
    assert sorted(j["job_id"] for j in done.json()["jobs"]) == sorted(str(j) for j in jobs)
    rows = q(db_url, "SELECT actor, actor_kind, action, result, detail->>'fingerprint' FROM outbox.admin_audit "
                     "ORDER BY id")
    assert rows == [("alice", "token", "redrive_group", "ok", fp)] * 2
    again = client.post(f"/admin/failure-groups/{fp}/redrive", headers=OPERATE)
    assert_error(again, 409, "conflict", "fingerprint")


def test_discard_resolve_ignore_reopen(client: TestClient[Any], db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2)
    discarded = client.post(f"/admin/failure-groups/{fp}/discard", json={"reason": "orders gone"}, headers=OPERATE)
    assert discarded.status_code == 200 and discarded.json()["discarded"] == 2, discarded.text
    assert q(db_url, "SELECT DISTINCT status FROM outbox.jobs WHERE id = ANY(%s)", jobs) == [("discarded",)]
    for action, status, previous in (("resolve", "resolved", "open"), ("ignore", "ignored", "resolved"),
                                     ("reopen", "open", "ignored")):
        r = client.post(f"/admin/failure-groups/{fp}/{action}", json={"note": f"{action} it"}, headers=OPERATE)
        assert r.status_code == 200, r.text
        assert (r.json()["status"], r.json()["previous"]) == (status, previous)
    group = client.get(f"/admin/failure-groups/{fp}", headers=READ).json()["group"]
    assert (group["status"], group["status_by"], group["status_note"]) == ("open", "alice", "reopen it")
    assert [r[2] for r in audit_rows(db_url)] == ["discard_group", "group_status", "group_status", "group_status"]


def test_errors_are_json_naming_the_field(client: TestClient[Any], db_url: str) -> None:
    fp, _ = failed(db_url, find_order, 1)
    assert_error(client.get("/admin/failure-groups/nope", headers=READ), 404, "not_found", "fingerprint")
    for action in ACTIONS:
        assert_error(client.post(f"/admin/failure-groups/nope/{action}", headers=OPERATE), 404, "not_found",
                     "fingerprint")
    assert_error(client.post(f"/admin/failure-groups/{fp}/redrive", json={"tier": "nope"}, headers=OPERATE),
                 422, "invalid", "tier")
    assert_error(client.post(f"/admin/failure-groups/{fp}/redrive", json={"batch": 0}, headers=OPERATE),
                 422, "invalid", "batch")
    assert_error(client.post(f"/admin/failure-groups/{fp}/redrive", json={"rate": 0.5}, headers=OPERATE),
                 422, "invalid", "rate")
    assert_error(client.post(f"/admin/failure-groups/{fp}/resolve", json={"status": "x"}, headers=OPERATE),
                 422, "invalid", "status")
    assert_error(client.get("/admin/failure-groups", params={"status": "fixed"}, headers=READ), 422, "invalid",
                 "status")
    assert_error(client.post(f"/admin/failure-groups/{fp}/redrive", content=b"[1]", headers={
        **OPERATE, "content-type": "application/json"}), 400, "malformed_json")
    # Refused actions on an unknown group are audited as such.
    assert {r[5] for r in audit_rows(db_url)} == {"not_found"}
