"""The ``tierbox`` CLI as a real subprocess: help text, migrate, one-line failures, check."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import msgspec
import psycopg
import pytest
from alembic.script import ScriptDirectory

from outbox.tiers import DEFAULT_TOPOLOGY
from tests.helpers import ROOT
from tierbox import migrations
from tierbox.cli.main import cli

SUBCOMMANDS = sorted(cli.commands)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m tierbox.cli ARGS`` with a clean TIERBOX_* environment plus ``env``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("TIERBOX_")}
    base["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), base.get("PYTHONPATH", "")] if p)
    base.update(env or {})
    return subprocess.run([sys.executable, "-m", "tierbox.cli", *args], cwd=ROOT, env=base, capture_output=True,
                          text=True, timeout=timeout, check=False)


def stderr_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


def write_topology(tmp_path: Path, extra: dict[str, object]) -> str:
    path = tmp_path / "topology.json"
    path.write_text(json.dumps(extra))
    return str(path)


# --------------------------------------------------------------------------- help


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_help_names_the_environment(command: str) -> None:
    assert {"migrate", "relay", "check", "prune"} <= set(SUBCOMMANDS)
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f"Usage: tierbox {command}" in result.stdout
    lines = result.stdout.splitlines()
    # One variable per line (not rewrapped into a paragraph).
    assert any(line.strip().startswith("TIERBOX_DATABASE_URL ") for line in lines), result.stdout
    assert any(line.strip().startswith("TIERBOX_AMQP_URL ") for line in lines), result.stdout


# --------------------------------------------------------------------------- migrate


def test_migrate_creates_the_schema_and_mirrors_the_topology(empty_db_url: str, tmp_path: Path) -> None:
    topology = write_topology(tmp_path, {
        "tiers": {
            "archive": {"weight": 0, "slo_s": None, "queue_type": "quorum", "pool": "deferred",
                        "queue": "archive-q"},
            "bulk": {"weight": 2, "slo_s": 3600, "queue_type": "quorum", "pool": "deferred"},
        },
        "pools": {"deferred": {"tiers": ["low", "bulk", "archive"], "concurrency": 2, "prefetch": 1}},
    })
    result = run_cli("migrate", env={"TIERBOX_DATABASE_URL": empty_db_url, "TIERBOX_TOPOLOGY_FILE": topology})
    assert result.returncode == 0, result.stderr
    assert "outbox schema at head" in result.stdout

    with psycopg.connect(empty_db_url) as conn:
        tiers = {r[0]: r[1:] for r in conn.execute("SELECT name, weight, slo_s, queue, pool FROM outbox.tiers")}
        version = conn.execute("SELECT version_num FROM outbox.alembic_version").fetchall()
    expected = {name: (spec.weight, spec.slo_s, spec.queue_name(name), spec.pool)
                for name, spec in DEFAULT_TOPOLOGY.tiers.items()}
    expected["archive"] = (0, None, "archive-q", "deferred")
    expected["bulk"] = (2, 3600.0, "bulk", "deferred")
    assert tiers == expected
    head = ScriptDirectory.from_config(migrations.alembic_config(empty_db_url)).get_current_head()
    assert version == [(head,)]

    # Migrating again is fine and changes nothing.
    again = run_cli("migrate", env={"TIERBOX_DATABASE_URL": empty_db_url, "TIERBOX_TOPOLOGY_FILE": topology})
    assert again.returncode == 0, again.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert {r[0]: r[1:] for r in conn.execute("SELECT name, weight, slo_s, queue, pool FROM outbox.tiers")} \
            == expected


def test_migrate_flag_overrides_the_environment(empty_db_url: str) -> None:
    result = run_cli("migrate", "--database-url", empty_db_url,
                     env={"TIERBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/nowhere"})
    assert result.returncode == 0, result.stderr
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT count(*) FROM outbox.tiers").fetchone() == (len(DEFAULT_TOPOLOGY.tiers),)


# --------------------------------------------------------------------------- operator-fixable failures


@pytest.mark.parametrize("command", ["migrate", "prune", "relay"])
def test_bad_database_url_is_one_line(command: str) -> None:
    result = run_cli(command, env={"TIERBOX_DATABASE_URL": "mysql://x"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "TIERBOX_DATABASE_URL" in lines[0]
    assert "mysql://x" in lines[0]


@pytest.mark.parametrize("command", ["migrate", "prune"])
def test_unreachable_postgres_is_one_line(command: str) -> None:
    result = run_cli(command, env={"TIERBOX_DATABASE_URL": "postgresql://postgres@127.0.0.1:1/test"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "Postgres" in lines[0]
    assert "127.0.0.1" in lines[0]


def test_bad_setting_names_its_variable() -> None:
    result = run_cli("prune", env={"TIERBOX_RELAY_BATCH_SIZE": "lots"})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and "TIERBOX_RELAY_BATCH_SIZE" in lines[0], result.stderr


def test_password_is_not_printed() -> None:
    result = run_cli("migrate", env={"TIERBOX_DATABASE_URL": "mysql://user:s3cret@db/x"})
    assert result.returncode == 1
    assert "s3cret" not in result.stderr and "s3cret" not in result.stdout
    assert "TIERBOX_DATABASE_URL" in result.stderr


# --------------------------------------------------------------------------- check


def test_check_sample_tasks_is_clean() -> None:
    result = run_cli("check", "--app", "tests.sample_tasks")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: ")
    assert "6 tiers" in result.stdout and "4 pools" in result.stdout
    assert "problem" not in result.stderr


def test_check_lists_every_problem(tmp_path: Path) -> None:
    module = f"bad_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text(
        "import outbox\n"
        "\n"
        "@outbox.task(tier='high', name='app.same_name')\n"
        "def first(x):\n"
        "    pass\n"
        "\n"
        "@outbox.task(tier='high', name='app.same_name')\n"
        "def second(x):\n"
        "    pass\n"
        "\n"
        "@outbox.task(name='app.no_tier')\n"
        "def no_tier():\n"
        "    pass\n"
    )
    result = run_cli("check", "--app", module,
                     env={"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    problems = [line for line in stderr_lines(result) if line.startswith("problem: ")]
    assert len(problems) == 2, result.stderr
    assert any("duplicate task name 'app.same_name'" in p for p in problems), result.stderr
    assert any("'app.no_tier' has no tier" in p for p in problems), result.stderr
    assert "ok:" not in result.stdout


def test_check_without_app_is_a_problem() -> None:
    result = run_cli("check")
    assert result.returncode == 1
    assert "no --app given" in result.stderr


def test_check_unimportable_app(tmp_path: Path) -> None:
    result = run_cli("check", "--app", "no_such_module_anywhere")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "cannot import no_such_module_anywhere" in result.stderr


def test_check_reports_a_tier_no_pool_consumes(tmp_path: Path) -> None:
    topology = write_topology(tmp_path, {
        "tiers": {"archive": {"weight": 0, "slo_s": None, "queue_type": "quorum", "pool": "deferred"}},
    })
    result = run_cli("check", "--app", "tests.sample_tasks", env={"TIERBOX_TOPOLOGY_FILE": topology})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert stderr_lines(result) == ["problem: tier 'archive' is consumed by no pool"]


def test_check_bad_topology_file_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.json"
    path.write_text("{not json")
    result = run_cli("check", "--app", "tests.sample_tasks", env={"TIERBOX_TOPOLOGY_FILE": str(path)})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1 and "TIERBOX_TOPOLOGY_FILE" in lines[0], result.stderr


def test_api_token_with_a_bad_name_is_one_line() -> None:
    result = run_cli("api-token", "no spaces allowed")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert stderr_lines(result) == ["tierbox: TIERBOX_API_TOKENS: token name 'no spaces allowed': letters, digits, _.@- "
                                    "only, at most 64"], result.stderr
    made = run_cli("api-token", "ci-bot", "--scope", "operate")
    assert made.returncode == 0 and "config: ci-bot:operate:" in made.stdout


def test_unmigrated_database_is_one_line(empty_db_url: str) -> None:
    result = run_cli("prune", env={"TIERBOX_DATABASE_URL": empty_db_url})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert "tierbox migrate" in lines[0] and "outbox.jobs" in lines[0]


def test_prune_on_a_migrated_database(db_url: str) -> None:
    result = run_cli("prune", env={"TIERBOX_DATABASE_URL": db_url})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "pruned 0 jobs"


def test_relay_urgent_lane_without_urgent_tiers_is_one_line_naming_the_option(tmp_path: Path) -> None:
    slow = {name: {**msgspec.structs.asdict(spec), "slo_s": 120.0} for name, spec in DEFAULT_TOPOLOGY.tiers.items()}
    topology = write_topology(tmp_path, {"tiers": slow})
    result = run_cli("relay", "--lane", "urgent", env={"TIERBOX_TOPOLOGY_FILE": topology})
    assert result.returncode != 0
    assert stderr_lines(result)[-1].endswith("--lane: urgent: the topology has no urgent tier (SLO of at most 30 s)")
    assert "Traceback" not in result.stderr
