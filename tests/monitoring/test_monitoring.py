"""The shipped alert rules and Grafana dashboard: promtool checks and unit-tests the rules, every metric
they read is one Tierbox exports (taken from the code that exports them), and compose.yml provisions both."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import REGISTRY

from tests.helpers import ROOT
from tierbox.api import metrics
from tierbox.ops.models import TierHealth

MONITORING = ROOT / "monitoring"
RULES = MONITORING / "prometheus" / "alerts.yml"
RULE_TESTS = MONITORING / "prometheus" / "alerts_test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "tierbox.json"
#: A metric name in PromQL: an identifier starting with tierbox_ (label values are quoted, never bare).
NAME = re.compile(r"\btierbox_[a-z0-9_]+\b")
#: The alerts issue #20 asks for (the scheduler's leader is read from Redis by the API: tierbox_scheduler_leader).
REQUIRED_ALERTS = {"TierboxSLOBreached", "TierboxDeadLettersGrowing", "TierboxBacklogWithoutConsumers",
                   "TierboxRelayLagging", "TierboxPublishedNotStartedGrowing", "TierboxBreakerOpen",
                   "TierboxSchedulerWithoutLeader"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is missing: install Debian's prometheus package (apt-get install prometheus), "
                    "or run scripts/ensure-promtool", pytrace=False)
    return found


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, cwd=RULES.parent, timeout=60)


def test_promtool_checks_the_rules_and_the_config() -> None:
    checked = run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout
    (RULES.parent / "api-token").write_text("placeholder\n")  # the secret file the config names (git-ignored)
    try:
        config = run("check", "config", str(RULES.parent / "prometheus.yml"))
    finally:
        (RULES.parent / "api-token").unlink()
    assert config.returncode == 0, config.stdout + config.stderr


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = run("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0 and "SUCCESS" in result.stdout, result.stdout + result.stderr
    tested = {case["alertname"] for t in yaml.safe_load(RULE_TESTS.read_text())["tests"]
              for case in t.get("alert_rule_test", [])}
    assert tested == {a["alert"] for a in alerts()}  # every rule has a unit test
    assert REQUIRED_ALERTS <= tested


def test_the_unit_tests_fail_when_a_rule_is_wrong(tmp_path: Path) -> None:
    broken = RULES.read_text().replace("tierbox_relay_lag_seconds > 60", "tierbox_relay_lag_seconds > 6000")
    (tmp_path / "alerts.yml").write_text(broken)
    (tmp_path / "alerts_test.yml").write_text(RULE_TESTS.read_text())
    result = subprocess.run([promtool(), "test", "rules", "alerts_test.yml"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60)
    assert result.returncode != 0 and "TierboxRelayLagging" in result.stdout + result.stderr


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r]


def exported() -> set[str]:
    """Every series name Tierbox can expose: the API's /metrics rendered by its own code, and the
    worker and relay metrics as registered by their modules (with the suffixes each type adds)."""
    import tierbox.relay.counters
    import tierbox.workers.counters  # noqa: F401 - registering the process metrics is the import's effect

    tier = TierHealth(tier="high", weight=1, slo_s=30.0, pending=1, due=1, oldest_due_age_s=1.0, published=1,
                      running=1, retrying=0, stuck=0, succeeded_5m=1, failed_5m=0, dead_5m=0, succeeded_1h=1,
                      failed_1h=0, dead_1h=0, wait_p50_s=0.1, wait_p95_s=0.2, wait_p99_s=0.3, slo_breached=False,
                      published_oldest_age_s=1.0, queue_depth=1, queue_consumers=1, dlq_depth=0, dlq_consumers=0)
    snap = metrics.Snapshot(tiers=[tier], dlq_open={"high": 1},
                            tables=[metrics.TableHealthRow("jobs", 1, 1, 1.0)], oldest_xmin_age=1, oldest_xact_s=1.0,
                            breakers={"stripe": "open"}, scheduler_leader=True)
    names = {line.split("{")[0].split(" ")[0] for line in metrics.render(snap).decode().splitlines()
             if line and not line.startswith("#")}
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("_sum", "_count", "_created")}
    for family in REGISTRY.collect():
        if family.name.startswith("tierbox_"):
            names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def used() -> dict[str, set[str]]:
    """Metric names each shipped file reads."""
    rules = {n for a in alerts() for n in NAME.findall(a["expr"])}
    board = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    return {"alerts.yml": rules, "tierbox.json": {n for e in exprs for n in NAME.findall(e)}}


def test_every_metric_the_rules_and_the_dashboard_read_is_exported() -> None:
    names = exported()
    assert {"tierbox_slo_breached", "tierbox_dlq_open", "tierbox_worker_events_total",
            "tierbox_job_wait_seconds_bucket"} <= names
    for source, metric_names in used().items():
        assert metric_names, source
        assert metric_names - names == set(), f"{source} reads metrics Tierbox does not export"


def test_the_dashboard_is_grafana_json_over_the_provisioned_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] and board["panels"]
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert {t["datasource"]["uid"] for p in board["panels"] for t in p["targets"]} == {uid}
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])


def test_compose_runs_prometheus_and_grafana_provisioned_with_them() -> None:
    compose = yaml.safe_load((ROOT / "compose.yml").read_text())
    services = compose["services"]
    mounts = {s: [v.split(":")[0] for v in services[s]["volumes"] if v.startswith("./")]
              for s in ("prometheus", "grafana")}
    assert mounts["prometheus"] == ["./monitoring/prometheus"]
    assert set(mounts["grafana"]) == {"./monitoring/grafana/provisioning", "./monitoring/grafana/dashboards"}
    for path in (*mounts["prometheus"], *mounts["grafana"]):
        assert (ROOT / path).is_dir(), path
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/tierbox.yml").read_text())
    dashboards_mount = next(v for v in services["grafana"]["volumes"] if "grafana/dashboards" in v)
    assert provider["providers"][0]["options"]["path"] == dashboards_mount.split(":")[1]
    config = yaml.safe_load((MONITORING / "prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["alerts.yml"]
    assert [t for j in config["scrape_configs"] for c in j["static_configs"] for t in c["targets"]] == ["api:8080"]
    assert "api" in services and services["api"]["command"][-1] == "8080"
