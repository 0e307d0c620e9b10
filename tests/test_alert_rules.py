"""The shipped alert rules: valid (`promtool check rules`), each one firing on the series it
watches and quiet on healthy ones (`promtool test rules`), on metrics the handler and TorchServe
declare, and the same in the Prometheus Operator's PrometheusRule."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
import yaml

from handlers.metrics import METRICS
from tests.conftest import ROOT

RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool comes with Prometheus (make test installs it)")


@needs_promtool
def test_promtool_checks_the_rules():
    out = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert out.returncode == 0 and "SUCCESS: 10 rules found" in out.stdout, out.stdout + out.stderr


@needs_promtool
def test_every_rule_fires_where_it_should_and_only_there():
    out = subprocess.run(
        [PROMTOOL, "test", "rules", "rules_test.yml"], cwd=RULES.parent, capture_output=True, text=True
    )
    assert out.returncode == 0 and "SUCCESS" in out.stdout, out.stdout + out.stderr
    tested = set(re.findall(r"alertname: (\w+)", (RULES.parent / "rules_test.yml").read_text()))
    assert tested == {r["alert"] for r in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]}


def test_the_rules_use_declared_metrics_only():
    # TorchServe's own: a GPU host's system metric, the frontend's 5xx, its queue time and requests
    frontend = {"GPUMemoryUtilization", "Requests5XX", "ts_queue_latency_microseconds", "ts_inference_requests_total"}
    declared = set(METRICS) | frontend
    metrics_yaml = yaml.safe_load((ROOT / "metrics.yaml").read_text())
    names = {m["name"] for section in metrics_yaml.values() if isinstance(section, dict)
             for kind in section.values() for m in kind}  # fmt: skip
    for rule in yaml.safe_load(RULES.read_text())["groups"][0]["rules"]:
        used = set(
            re.findall(r"\b(image_classifier_\w+?|GPUMemoryUtilization|Requests5XX|ts_\w+)(?:_bucket)?\b", rule["expr"])
        )
        assert used and used <= declared and used <= names | frontend, (rule["alert"], used)


def test_the_prometheus_rule_holds_the_same_groups():
    operator = yaml.safe_load((ROOT / "deploy" / "kserve" / "monitoring" / "prometheusrule.yaml").read_text())
    assert (
        operator["kind"] == "PrometheusRule"
        and operator["spec"]["groups"] == yaml.safe_load(RULES.read_text())["groups"]
    )
