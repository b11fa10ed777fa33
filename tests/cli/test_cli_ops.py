"""``tierbox dlq ...`` and ``tierbox tiers``: same data and audit rows as the API, actor = the OS user."""

from __future__ import annotations

import getpass
import json
import uuid
from typing import Any

from click.testing import CliRunner, Result

from tests.api.test_api import audit_rows, dead, q
from tierbox.cli.main import cli


def tierbox(db_url: str, *args: str) -> Result:
    """Run a tierbox command in-process against ``db_url``."""
    return CliRunner().invoke(cli, [*args, "--database-url", db_url], catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_list_show_and_by_tier(db_url: str) -> None:
    a, b = dead(db_url, 2)
    table = tierbox(db_url, "dlq", "list")
    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[0].split()[:4] == ["FAILED_AT", "JOB_ID", "TIER", "TASK"]
    assert str(a) in table.output and str(b) in table.output
    page = as_json(tierbox(db_url, "dlq", "list", "--json", "--limit", "1"))
    assert [i["job_id"] for i in page["items"]] == [str(b)] and page["next_cursor"]
    rest = as_json(tierbox(db_url, "dlq", "list", "--json", "--cursor", page["next_cursor"]))
    assert [i["job_id"] for i in rest["items"]] == [str(a)]
    shown = as_json(tierbox(db_url, "dlq", "show", str(a), "--json"))
    assert shown["dead_letter"]["job_id"] == str(a) and shown["dead_letter"]["payload"]["kwargs"] == {"note": "x"}
    assert "error_message" in tierbox(db_url, "dlq", "show", str(a)).output
    assert as_json(tierbox(db_url, "dlq", "by-tier", "--json")) == [{"tier": "normal", "reason": "failed", "count": 2}]


def test_redrive_and_discard_are_audited_as_the_os_user(db_url: str) -> None:
    a, b = dead(db_url, 2)
    out = tierbox(db_url, "dlq", "redrive", str(a), "--reason", "fixed", "--to-tier", "high")
    assert out.exit_code == 0 and out.output.startswith(f"redriven {a} as "), out.output
    again = tierbox(db_url, "dlq", "redrive", str(a))
    assert again.exit_code == 1 and "already redriven" in again.output
    assert as_json(tierbox(db_url, "dlq", "discard", str(b), "--json")) == {"job_id": str(b), "discarded": True}
    user = getpass.getuser()
    assert [(r[0], r[1], r[2], r[3], r[5]) for r in audit_rows(db_url)] == [
        (user, "os_user", "redrive", [a], "ok"), (user, "os_user", "redrive", [a], "refused"),
        (user, "os_user", "discard", [b], "ok")]
    assert all(r[4].startswith("cli@") for r in audit_rows(db_url))
    assert q(db_url, "SELECT tier FROM outbox.jobs WHERE redrive_of = %s", a) == [("high",)]


def test_bulk_redrive_needs_a_reason_and_can_dry_run(db_url: str) -> None:
    dead(db_url, 3, task="sample.webhook")
    dead(db_url, task="sample.invoice")
    no_reason = tierbox(db_url, "dlq", "redrive", "--all", "--task", "sample.webhook")
    assert no_reason.exit_code == 2 and "--reason" in no_reason.output
    dry = tierbox(db_url, "dlq", "redrive", "--all", "--task", "sample.webhook", "--reason", "outage", "--dry-run")
    assert dry.output.strip() == "dry run: 3 dead letters would be redriven"
    done = as_json(tierbox(db_url, "dlq", "redrive", "--all", "--task", "sample.webhook", "--reason", "outage",
                           "--rate", "10", "--json"))
    assert done["count"] == 3 and done["batches"] == 1
    assert [r[2] for r in audit_rows(db_url)] == ["redrive_bulk"]


def test_bad_input_is_one_line_and_exit_2(db_url: str) -> None:
    bad = tierbox(db_url, "dlq", "show", "not-a-uuid")
    assert bad.exit_code == 2 and bad.output.strip() == "tierbox: job_id: not a UUID: 'not-a-uuid'"
    unknown = tierbox(db_url, "dlq", "list", "--tier", "nope")
    assert unknown.exit_code == 2 and "unknown tier" in unknown.output
    missing = tierbox(db_url, "dlq", "discard", str(uuid.uuid4()))
    assert missing.exit_code == 1 and "no dead letter" in missing.output


def test_tiers_table_and_json(db_url: str) -> None:
    dead(db_url)
    rows = as_json(tierbox(db_url, "tiers", "--json"))["tiers"]
    assert [r["tier"] for r in rows][:2] == ["critical", "calls"]
    assert next(r for r in rows if r["tier"] == "normal")["dead_5m"] == 1
    table = tierbox(db_url, "tiers")
    assert table.exit_code == 0 and table.output.splitlines()[0].startswith("TIER")
