"""``tierbox dlq groups ...`` in-process (click's CliRunner) against a real database: same data and audit rows
as the API, the OS user as the actor."""

from __future__ import annotations

import getpass
import json
import signal
import subprocess
import sys
from typing import Any

from click.testing import CliRunner, Result

from tests.api.test_api import q
from tests.helpers import ROOT, wait_until
from tests.triage.test_group_actions import failed
from tests.triage.test_groups import charge, find_order
from tierbox.cli.main import cli


def tierbox(db_url: str, *args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, [*args, "--database-url", db_url], input=input, catch_exceptions=False)


def as_json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_list_and_show(db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2)
    other, _ = failed(db_url, charge, 1)
    table = tierbox(db_url, "dlq", "groups")
    assert table.exit_code == 0, table.output
    head, *rows = table.output.splitlines()
    assert head.split() == ["FINGERPRINT", "CAUSE", "ACTION", "OPEN", "FAILED", "FIRST_SEEN", "LAST_SEEN", "STATUS"]
    assert {r.split()[0] for r in rows} == {fp[:12], other[:12]}
    assert any(r.startswith(fp[:12]) and "data error" in r for r in rows)
    only = as_json(tierbox(db_url, "dlq", "groups", "--task", "tests.triage.charge", "--json"))
    assert [g["group"]["fingerprint"] for g in only] == [other]
    assert as_json(tierbox(db_url, "dlq", "groups", "--status", "resolved", "--json")) == []
    shown = tierbox(db_url, "dlq", "groups", "show", fp[:6])
    assert shown.exit_code == 0, shown.output
    assert "cause     data error" in shown.output and str(jobs[0]) in shown.output
    assert as_json(tierbox(db_url, "dlq", "groups", "show", fp, "--json"))["group"]["open_dead_letters"] == 2


def test_redrive_asks_after_the_dry_run_and_is_audited(db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2, 3)
    dry = tierbox(db_url, "dlq", "groups", "redrive", fp[:8], "--dry-run")
    assert dry.output.strip() == (f"dry run: group {fp}: 3 dead letter(s) to redrive "
                                  "(tiers: high 3; tasks: tests.triage.find_order 3)")
    declined = tierbox(db_url, "dlq", "groups", "redrive", fp[:8], input="n\n")
    assert declined.exit_code == 1 and "Redrive them?" in declined.output and "Aborted" in declined.output
    assert q(db_url, "SELECT count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL") == [(0,)]
    done = tierbox(db_url, "dlq", "groups", "redrive", fp[:8], "--batch", "2", "--rate", "100", "--reason", "fixed",
                   input="y\n")
    assert done.exit_code == 0, done.output
    assert f"redriven 3 dead letter(s) of group {fp} in 2 batch(es); 0 left" in done.output
    assert q(db_url, "SELECT count(*), count(DISTINCT redrive_of) FROM outbox.jobs WHERE redrive_of = ANY(%s)",
             jobs) == [(3, 3)]
    user = getpass.getuser()
    rows = q(db_url, "SELECT actor, actor_kind, action, result, detail->>'fingerprint', detail->>'reason' "
                     "FROM outbox.admin_audit ORDER BY id")
    assert rows == [(user, "os_user", "redrive_group", "ok", fp, "fixed")] * 2
    again = tierbox(db_url, "dlq", "groups", "redrive", fp, "--yes")
    assert again.exit_code == 1 and "nothing to redrive" in again.output


def test_discard_and_the_status_commands(db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, 1, 2)
    out = tierbox(db_url, "dlq", "groups", "discard", fp, "--yes", "--reason", "gone")
    assert out.output.strip() == f"discarded 2 dead letter(s) of group {fp}"
    assert q(db_url, "SELECT DISTINCT status FROM outbox.jobs WHERE id = ANY(%s)", jobs) == [("discarded",)]
    assert tierbox(db_url, "dlq", "groups", "resolve", fp[:5], "--note", "deployed").output.strip() == (
        f"group {fp}: open -> resolved")
    assert as_json(tierbox(db_url, "dlq", "groups", "ignore", fp, "--json"))["previous"] == "resolved"
    assert tierbox(db_url, "dlq", "groups", "reopen", fp).output.strip() == f"group {fp}: ignored -> open"
    assert [r[0] for r in q(db_url, "SELECT action FROM outbox.admin_audit ORDER BY id")] == [
        "discard_group", "group_status", "group_status", "group_status"]


def test_bad_input_is_one_line(db_url: str) -> None:
    failed(db_url, find_order, 1)
    missing = tierbox(db_url, "dlq", "groups", "show", "nope")
    assert missing.exit_code == 1 and missing.output.strip() == "tierbox: no failure group 'nope'"
    bad_tier = tierbox(db_url, "dlq", "groups", "redrive", "nope", "--to-tier", "nowhere")
    assert bad_tier.exit_code == 2 and "unknown tier" in bad_tier.output
    bad_rate = tierbox(db_url, "dlq", "groups", "redrive", "nope", "--rate", "0")
    assert bad_rate.exit_code == 2 and "--rate" in bad_rate.output


def test_ctrl_c_stops_a_paced_redrive_cleanly_and_running_it_again_redrives_the_rest_once(db_url: str) -> None:
    fp, jobs = failed(db_url, find_order, *range(8))
    command = [sys.executable, "-m", "tierbox.cli", "dlq", "groups", "redrive", fp, "--yes", "--batch", "1",
               "--rate", "1", "--database-url", db_url]  # 8 jobs take 7 s: Ctrl-C lands mid-way
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_until(lambda: q(db_url, "SELECT count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL")[0][0] >= 2,
               timeout=30, what="two batches redriven")
    first.send_signal(signal.SIGINT)  # the operator presses Ctrl-C
    out, _ = first.communicate(timeout=30)
    assert first.returncode == 1 and "tierbox: interrupted after" in out and "run the same command again" in out, out
    done = q(db_url, "SELECT count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL")[0][0]
    assert 2 <= done < 8
    # Whole batches only: every redriven dead letter has its new job and its audit row.
    assert q(db_url, "SELECT count(*) FROM outbox.dead_letters WHERE redriven_at IS NOT NULL") == [(done,)]
    assert q(db_url, "SELECT sum(cardinality(job_ids)) FROM outbox.admin_audit WHERE action = 'redrive_group'") == [
        (done,)]
    again = tierbox(db_url, "dlq", "groups", "redrive", fp, "--yes", "--batch", "3")
    assert again.exit_code == 0 and f"redriven {8 - done} dead letter(s)" in again.output, again.output
    rows = q(db_url, "SELECT redrive_of, count(*) FROM outbox.jobs WHERE redrive_of IS NOT NULL GROUP BY 1")
    assert sorted(r[0] for r in rows) == sorted(jobs) and {r[1] for r in rows} == {1}
