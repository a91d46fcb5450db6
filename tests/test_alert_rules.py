"""The alert rules (monitoring/alert_rules.py) and the Alertmanager configuration, checked by the
real tools: promtool (Debian's prometheus 2.42) and amtool (prometheus-alertmanager).

* the committed rules file and PrometheusRule are what the module renders;
* ``promtool check rules`` accepts both; ``promtool test rules`` runs
  tests/promtool/fraud-alerts.test.yaml, which holds a firing and a quiet case of every alert, and
  fails when a rule's threshold moves;
* rules query only metrics the code exports (or kube-state-metrics' named ones);
* every alert has its runbook section in docs/monitoring.md;
* Alertmanager's configuration is valid and routes every severity to the webhook;
* docker-compose runs the Prometheus and Alertmanager versions tested here.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_fixtures import ALERTMANAGER_CONFIG, tool
from test_deploy_dashboard import exported, metric_names

from monitoring import alert_rules as ar

ROOT = Path(__file__).resolve().parents[1]
UNIT_TESTS = ROOT / "tests/promtool/fraud-alerts.test.yaml"
COMPOSE = ROOT / "k8s/compose/docker-compose.yaml"
RUNBOOK = ROOT / ar.RUNBOOK


def run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


def rules() -> list[dict]:
    return [rule for group in ar.rule_groups() for rule in group["rules"]]


def test_committed_files_are_rendered_from_the_module() -> None:
    assert ar.stale_files() == [], "run: python -m monitoring.alert_rules write"
    plain = yaml.safe_load(ar.RULES_FILE.read_text())
    operator = yaml.safe_load(ar.PROMETHEUS_RULE_FILE.read_text())
    assert operator["spec"] == plain
    assert ar.main(["check"]) == 0


def test_check_names_a_stale_or_missing_file(tmp_path: Path) -> None:
    text = ar.render(ar.rules_document())
    stale, missing, fresh = tmp_path / "stale.yaml", tmp_path / "missing.yaml", tmp_path / "ok.yaml"
    stale.write_text("groups: []\n")
    fresh.write_text(text)
    assert ar.stale_files({stale: text, missing: text, fresh: text}) == [stale, missing]


def test_promtool_accepts_both_files(tmp_path: Path) -> None:
    spec = tmp_path / "prometheusrule-spec.yaml"
    spec.write_text(yaml.safe_dump(yaml.safe_load(ar.PROMETHEUS_RULE_FILE.read_text())["spec"]))
    for path in (ar.RULES_FILE, spec):
        done = run(tool("promtool"), "check", "rules", str(path))
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"SUCCESS: {len(rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = run(tool("promtool"), "test", "rules", str(UNIT_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    cases = [
        case
        for test in yaml.safe_load(UNIT_TESTS.read_text())["tests"]
        for case in test["alert_rule_test"]
    ]
    for name in ar.alert_names():
        mine = [case for case in cases if case["alertname"] == name]
        assert any(case["exp_alerts"] for case in mine), f"{name}: no case where it fires"
        assert any(not case["exp_alerts"] for case in mine), f"{name}: no case where it is quiet"


def test_promtool_fails_when_a_threshold_moves(tmp_path: Path) -> None:
    """The unit tests pin the rules: the same tests over a rule file with another lag bound fail
    on that alert."""
    moved = ar.AlertPolicy(max_lag_messages=12_000)
    (tmp_path / "rules.yaml").write_text(ar.render(ar.rules_document(moved)))
    suite = yaml.safe_load(UNIT_TESTS.read_text())
    suite["rule_files"] = ["rules.yaml"]
    (tmp_path / "tests.yaml").write_text(yaml.safe_dump(suite, sort_keys=False))
    done = run(tool("promtool"), "test", "rules", str(tmp_path / "tests.yaml"))
    assert done.returncode == 1
    assert "FraudConsumerLag" in done.stdout + done.stderr


def test_rules_query_only_exported_metrics() -> None:
    known = exported() | ar.EXTERNAL_METRICS
    for rule in rules():
        names = metric_names(rule["expr"])
        assert names, rule["alert"]
        assert names <= known, f"{rule['alert']}: no exporter registers {sorted(names - known)}"


def test_pending_durations_shorten_together() -> None:
    quick = ar.rule_groups(ar.AlertPolicy().with_pending("1s"))
    assert {rule["for"] for group in quick for rule in group["rules"]} <= {"1s", "0s"}


def test_every_alert_has_a_runbook_section() -> None:
    headings = set(re.findall(r"^#+ (\w+)$", RUNBOOK.read_text(), re.M))
    for rule in rules():
        assert rule["annotations"]["runbook"] == f"{ar.RUNBOOK}#{rule['alert'].lower()}"
        assert rule["alert"] in headings, f"{ar.RUNBOOK}: no section {rule['alert']}"


def test_alertmanager_config_routes_every_severity_to_the_webhook() -> None:
    done = run(tool("amtool"), "check-config", str(ALERTMANAGER_CONFIG))
    assert done.returncode == 0, done.stdout + done.stderr
    severities = {rule["labels"]["severity"] for rule in rules()}
    assert severities == {ar.INFO, ar.WARNING, ar.CRITICAL}
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    hooks = {
        r["name"]: r["webhook_configs"] for r in config["receivers"] if r.get("webhook_configs")
    }
    for severity in severities:
        done = run(
            tool("amtool"),
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER_CONFIG}",
            "alertname=FraudX",
            f"severity={severity}",
        )
        assert done.returncode == 0, done.stdout + done.stderr
        receiver = done.stdout.strip()
        assert receiver in hooks, f"severity {severity} goes to {receiver}, not a webhook"
        assert all(hook["send_resolved"] for hook in hooks[receiver])


def _version(binary: str) -> tuple[int, int]:
    done = run(tool(binary), "--version")
    found = re.search(r"version (\d+)\.(\d+)\.", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return int(found[1]), int(found[2])


@pytest.mark.parametrize(
    ("service", "binary"),
    [("prometheus", "prometheus"), ("alertmanager", "prometheus-alertmanager")],
)
def test_compose_runs_the_tested_version(service: str, binary: str) -> None:
    image = yaml.safe_load(COMPOSE.read_text())["services"][service]["image"]
    tag = re.fullmatch(r"prom/\w+:v(\d+)\.(\d+)\.\d+", image)
    assert tag, f"{service}: {image} is not pinned to a release"
    assert (int(tag[1]), int(tag[2])) == _version(binary), f"{service}: {image}"
