"""Prometheus configuration, recording and alerting rules, checked with ``promtool``.

promtool is required, not optional: without it these tests fail and say how to install it.
The alerting rules' behaviour lives in promtool unit tests (deploy/prometheus/tests/*.yml);
these tests run them and check that every alert has a firing and a quiet case.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from streams.metrics import REGISTRY

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS = REPO / "deploy" / "prometheus"
CONFIG = PROMETHEUS / "prometheus.yml"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
TEST_FILES = sorted((PROMETHEUS / "tests").glob("*.yml"))
ALERTS_FILE = PROMETHEUS / "rules" / "vigil-alerts.yml"
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))

EXPECTED_ALERTS = {
    "VigilWorkersDown",
    "VigilPipelineStalled",
    "VigilConsumerLagHigh",
    "VigilEventLagHigh",
    "VigilTritonDown",
    "VigilDegradedMode",
    "VigilDeadletterSurge",
    "VigilOODSurge",
    "VigilRecoveryStalled",
    "VigilAlertStorm",
}


@pytest.fixture(scope="session")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool is required to check the Prometheus rules: "
            "install it with `apt-get install prometheus` (Debian/Ubuntu)"
        )
    return path


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n{result.stdout}{result.stderr}"


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict)
    return data


def _rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in _load(path)["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    exprs: list[str] = []
    for path in DASHBOARDS:
        for panel in json.loads(path.read_text())["panels"]:
            exprs.extend(target["expr"] for target in panel.get("targets", []))
    return exprs


def test_config_is_valid_and_finds_every_rule_file(promtool: str) -> None:
    # rule_files are relative to the config's directory, so this works from any cwd.
    result = _run(promtool, "check", "config", str(CONFIG))
    assert result.returncode == 0, _output(result)
    assert f"{len(RULE_FILES)} rule files found" in result.stdout + result.stderr


def test_rule_and_test_files_exist() -> None:
    assert {p.name for p in RULE_FILES} == {"vigil-recording.yml", "vigil-alerts.yml"}
    assert TEST_FILES


@pytest.mark.parametrize("path", RULE_FILES, ids=lambda p: p.name)
def test_rules_are_valid(promtool: str, path: Path) -> None:
    result = _run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, _output(result)


@pytest.mark.parametrize("path", TEST_FILES, ids=lambda p: p.name)
def test_rule_unit_tests_pass(promtool: str, path: Path) -> None:
    result = _run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, _output(result)


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    alerts = {rule["alert"] for rule in _rules(ALERTS_FILE) if "alert" in rule}
    assert alerts == EXPECTED_ALERTS
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TEST_FILES:
        for case in _load(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alerts <= firing, f"never seen firing: {sorted(alerts - firing)}"
    assert alerts <= quiet, f"never seen quiet: {sorted(alerts - quiet)}"


def test_alerts_carry_severity_and_text() -> None:
    for rule in _rules(ALERTS_FILE):
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]
        assert rule["annotations"]["description"], rule["alert"]
        assert "patient" not in " ".join(rule.get("labels", {})), rule["alert"]


def test_recorded_series_that_are_read_are_defined() -> None:
    recorded = {rule["record"] for path in RULE_FILES for rule in _rules(path) if "record" in rule}
    alert_exprs = [str(rule["expr"]) for rule in _rules(ALERTS_FILE)]
    used = set(re.findall(r"vigil:[a-z0-9_:]+", " ".join(alert_exprs + _dashboard_exprs())))
    assert used <= recorded, f"not recorded: {sorted(used - recorded)}"


def _worker_metric_names() -> set[str]:
    """Names of the series the worker exports (streams/metrics.py)."""
    names = set()
    for family in REGISTRY.collect():
        if family.name.startswith("vigil_"):
            # prometheus_client names a counter's family without its `_total` suffix.
            names.add(f"{family.name}_total" if family.type == "counter" else family.name)
    return names


def test_only_metrics_the_worker_exports_are_queried() -> None:
    exprs = [str(r["expr"]) for path in RULE_FILES for r in _rules(path)] + _dashboard_exprs()
    names = set(re.findall(r"\bvigil_[a-z0-9_]+", " ".join(exprs)))
    base = {re.sub(r"_(bucket|sum|count)$", "", name) for name in names}
    known = _worker_metric_names()
    assert base <= known, f"not in streams/metrics.py: {sorted(base - known)}"


def test_dashboard_queries_parse(promtool: str, tmp_path: Path) -> None:
    # promtool has no offline PromQL parser; recording rules made of the queries are parsed.
    exprs = [re.sub(r"\$__(rate_)?interval", "5m", expr) for expr in _dashboard_exprs()]
    assert exprs
    rules = [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = tmp_path / "dashboards.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = _run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, _output(result)


def _panel_expr(dashboard: str, title: str) -> str:
    panels = json.loads((REPO / "deploy" / "grafana" / "dashboards" / dashboard).read_text())
    (panel,) = [p for p in panels["panels"] if p["title"] == title]
    (target,) = panel["targets"]
    return str(target["expr"])


def test_degraded_share_panel_computes_the_share(promtool: str, tmp_path: Path) -> None:
    # The pipeline dashboard's headline panel, evaluated by Prometheus's own engine on
    # counters shaped like the worker's (degraded scores carry model="news2").
    expr = _panel_expr("vigil-pipeline.json", "Degraded scores (share)")

    def series(model: str, degraded: str, instance: str, values: str) -> dict[str, str]:
        labels = f'model="{model}",degraded="{degraded}",instance="{instance}"'
        return {"series": f"vigil_scores_total{{{labels}}}", "values": values}

    cases = [
        # two workers, 40 scores/min in all, 10 of them degraded: 25 %
        (
            [
                series("deterioration", "false", "w1", "0+20x20"),
                series("news2", "true", "w1", "0+10x20"),
                series("deterioration", "false", "w2", "0+10x20"),
                series("news2", "true", "w2", "0x20"),
            ],
            0.25,
        ),
        # primed series at zero: no degraded score is 0, not "no data"
        (
            [
                series("deterioration", "false", "w1", "0+30x20"),
                series("news2", "true", "w1", "0x20"),
            ],
            0.0,
        ),
        # a worker that never primed the degraded series: still 0
        ([series("deterioration", "false", "w1", "0+30x20")], 0.0),
        # an outage: every score degraded
        (
            [
                series("deterioration", "false", "w1", "0x20"),
                series("news2", "true", "w1", "0+30x20"),
            ],
            1.0,
        ),
    ]
    tests = [
        {
            "interval": "1m",
            "input_series": inputs,
            "promql_expr_test": [
                {"expr": expr, "eval_time": "10m", "exp_samples": [{"labels": "{}", "value": v}]}
            ],
        }
        for inputs, v in cases
    ]
    path = tmp_path / "degraded_share_test.yml"
    path.write_text(yaml.safe_dump({"rule_files": [], "tests": tests}))
    result = _run(promtool, "test", "rules", str(path))
    assert result.returncode == 0, _output(result)
