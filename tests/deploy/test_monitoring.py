"""deploy/monitoring: the alerting rules (plain and as a PrometheusRule) and the dashboard.

`promtool check rules` and `promtool test rules` (Debian `prometheus`) run on the files as they
are checked in; tests/integration/test_monitoring.py checks the metric names against a
running edge's /metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MONITORING = ROOT / "deploy" / "monitoring"
RULES = MONITORING / "iap-alerts.rules.yaml"
RULE_TESTS = MONITORING / "iap-alerts.test.yaml"
PROMETHEUS_RULE = MONITORING / "k8s" / "prometheusrule.yaml"
DASHBOARD = MONITORING / "grafana-dashboard.json"
METRIC = re.compile(r"\biap_[a-z_]+\b")
#: The issue's list: IdP unreachable, 5xx ratio, key or certificate expiry, rate-limit store
#: errors, exporter drops (and the internal errors operations.md says to alert on).
ALERTS = {
    "IapIdpUnreachable": "iap_idp_requests_total",
    "IapIdpMetadataStale": "iap_idp_metadata_age_seconds",
    "IapHigh5xxRatio": "iap_requests_total",
    "IapCertificateExpiresSoon": "iap_certificate_expiry_seconds",
    "IapSigningKeyRotationOverdue": "iap_signing_key_age_seconds",
    "IapRateLimitStoreErrors": "iap_rate_limit_store_errors_total",
    "IapSpansDropped": "iap_spans_dropped_total",
    "IapAuthnInternalErrors": "iap_authn_internal_errors_total",
}


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool not found (install the Debian package `prometheus`)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def run_promtool(*args: str, cwd: Path = MONITORING) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [rule for group in document["groups"] for rule in group["rules"]]


def dashboard_exprs() -> list[str]:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return [target["expr"] for panel in document["panels"] for target in panel["targets"]]


def referenced_metrics() -> set[str]:
    """Every iap metric name the alerts and the dashboard use."""
    exprs = [rule["expr"] for rule in rules()] + dashboard_exprs()
    return {name for expr in exprs for name in METRIC.findall(expr)}


def test_promtool_accepts_the_rules() -> None:
    result = run_promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    broken = tmp_path / "broken.rules.yaml"
    broken.write_text(RULES.read_text().replace("> 0.05", "> > 0.05"), encoding="utf-8")
    result = run_promtool("check", "rules", str(broken))
    assert result.returncode != 0
    assert "IapHigh5xxRatio" in result.stdout + result.stderr


def test_the_rules_are_the_issues_alerts_on_the_metrics_they_watch() -> None:
    by_name = {rule["alert"]: rule for rule in rules()}
    assert set(by_name) == set(ALERTS)
    for name, metric in ALERTS.items():
        assert metric in by_name[name]["expr"], name
        assert by_name[name]["labels"]["severity"] in {"warning", "critical"}
        assert by_name[name]["annotations"]["summary"]


def test_promtool_unit_tests_pass() -> None:
    result = run_promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    document = yaml.safe_load(RULE_TESTS.read_text(encoding="utf-8"))
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in document["tests"]:
        for check in case["alert_rule_test"]:
            (firing if check["exp_alerts"] else quiet).add(check["alertname"])
    assert firing == quiet == set(ALERTS)


def test_the_unit_tests_fail_when_a_threshold_moves(tmp_path: Path) -> None:
    """A rule that would not fire where it should makes `promtool test rules` fail."""
    (tmp_path / RULES.name).write_text(
        RULES.read_text().replace("14 * 86400", "7 * 86400"), encoding="utf-8"
    )
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text(), encoding="utf-8")
    result = run_promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "IapCertificateExpiresSoon" in result.stdout + result.stderr


def test_the_prometheus_rule_carries_the_plain_rules(tmp_path: Path) -> None:
    resource = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
    assert resource["apiVersion"] == "monitoring.coreos.com/v1"
    assert resource["kind"] == "PrometheusRule"
    assert resource["metadata"]["namespace"] == "iap"
    assert resource["spec"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))
    spec = tmp_path / "spec.rules.yaml"
    spec.write_text(yaml.safe_dump(resource["spec"]), encoding="utf-8")
    result = run_promtool("check", "rules", str(spec))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_dashboard_covers_what_operators_watch() -> None:
    document = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert document["uid"] == "iap-edge"
    ids = [panel["id"] for panel in document["panels"]]
    assert len(ids) == len(set(ids))
    exprs = "\n".join(dashboard_exprs())
    for needed in (
        "rate(iap_requests_total",  # request rate
        "iap_request_duration_seconds_bucket",  # latency
        "iap_authz_total",  # decisions
        "iap_authn_total",  # ... and their reasons
        'endpoint="token"',  # sign-ins
        'endpoint="refresh"',  # refreshes
        'code=~"502|503|504"',  # upstream errors
        "iap_upstream_duration_seconds_bucket",
        "iap_spans_dropped_total",  # exporter health
    ):
        assert needed in exprs, needed
    for panel in document["panels"]:
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
