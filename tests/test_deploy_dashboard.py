"""The Grafana dashboards (k8s/grafana/*.json: operations, model performance) query only metrics
the code exports.

Metric names are pulled out of every panel's PromQL and looked up among the names the
exporters register. The exporters are found, not listed by hand: every module of the layered
packages (pyproject.toml ``[tool.importlinter] root_packages``) that imports prometheus_client is
imported, and the test collects
* every CollectorRegistry, metric or collector bound at module level, and
* the registry of every ``*Metrics`` class in the module (instantiated with no arguments; this is
  the pattern of streaming/metrics.py and serving/metrics.py, one registry per instance).
prometheus_client's default REGISTRY is left out: no server of ours exposes it.

TF Serving itself (production serves with the tensorflow/serving image) exports the names in
TF_SERVING_METRICS; the dashboard may use those, and any ``:tensorflow:`` name it uses must be
one of them, so the panels work against the real server and not only the embedded one.

A panel that queries a name no exporter registers fails, naming the panel and the names.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import re
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "k8s/grafana/fraud-dashboard.json"
PERFORMANCE = ROOT / "k8s/grafana/model-performance-dashboard.json"
DASHBOARDS = sorted((ROOT / "k8s/grafana").glob("*.json"))

PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"][
    "root_packages"
]

# TF Serving's Prometheus names (tensorflow_serving/model_servers + servables/tensorflow
# metrics, exported as ":" + the monitoring path with "/" -> ":"). Latencies are microseconds.
_TF_HISTOGRAMS = (
    ":tensorflow:serving:request_latency",
    ":tensorflow:serving:runtime_latency",
    ":tensorflow:serving:batching_session:queuing_latency",
)
TF_SERVING_METRICS = frozenset(
    {":tensorflow:serving:request_count", ":tensorflow:serving:request_log_count"}
    | {f"{h}{s}" for h in _TF_HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)

# --- PromQL -> metric names --------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$\w+")
_IDENT = re.compile(r"(?<![\w:.])([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool"}
_KEYWORDS |= {"and", "or", "unless", "offset", "atan2", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names referenced by a PromQL expression (functions, labels, keywords removed)."""
    s = _STRING.sub('""', expr)
    s = _MATCHERS.sub("", s)
    s = _RANGES.sub("", s)
    s = _GROUPING.sub("", s)
    s = _GRAFANA_VAR.sub("", s)
    names = set()
    for match in _IDENT.finditer(s):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in _KEYWORDS:
            continue
        names.add(name)
    return names


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, job) (rate(:tensorflow:serving:request_latency_bucket"
        '{model_name="fraud", api=~"a|b"}[$__rate_interval] offset 5m))) / 1e6 '
        '+ on (instance) group_left(version) sum without (pod) (fraud_x_total{a="b{c}"}) '
        "> bool 0 and ignoring(x) up"
    )
    assert metric_names(expr) == {
        ":tensorflow:serving:request_latency_bucket",
        "fraud_x_total",
        "up",
    }
    assert metric_names('label_replace(foo, "dst", "$1", "src", "(.*)")') == {"foo"}
    assert metric_names("clamp_min(sum(rate(a_total[1m])), 1e-9)") == {"a_total"}


# --- exported names ----------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
}


def sample_names(collector: object) -> set[str]:
    """Every series name a collector can expose, also for labelled metrics with no child yet."""
    names = set()
    describe = getattr(collector, "describe", None)
    families = list(describe()) if callable(describe) else []
    if not families:
        families = collector.collect()
    for family in families:
        names |= {family.name + s for s in _SUFFIXES.get(family.type, ("",))}
        names |= {sample.name for sample in family.samples}
    return names


def _collectors_of(module) -> list[object]:
    found: list[object] = []
    for value in vars(module).values():
        if inspect.isclass(value):
            if value.__module__ == module.__name__ and value.__name__.endswith("Metrics"):
                registry = getattr(value(), "registry", None)
                assert isinstance(registry, CollectorRegistry), f"{value.__name__}: no .registry"
                found.append(registry)
        elif isinstance(value, CollectorRegistry | MetricWrapperBase) or (
            not inspect.ismodule(value) and callable(getattr(value, "collect", None))
        ):
            found.append(value)
    return found


def _imports_prometheus(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names = [node.module or ""]
        else:
            continue
        if any(n == "prometheus_client" or n.startswith("prometheus_client.") for n in names):
            return True
    return False


def exporter_modules() -> Iterator[str]:
    """Every module of the layered packages that imports prometheus_client (at the top or in a function)."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if _imports_prometheus(path):
                yield ".".join(path.relative_to(ROOT).with_suffix("").parts)


@cache
def exported() -> frozenset[str]:
    """Every series name the exporter modules register."""
    names: set[str] = set()
    for module_name in exporter_modules():
        for collector in _collectors_of(importlib.import_module(module_name)):
            names |= sample_names(collector)
    return frozenset(names)


def test_exporters_register_the_core_families() -> None:
    names = exported()
    for name in (
        "fraud_stream_consumed_total",
        "fraud_stream_end_to_end_latency_seconds_bucket",
        "fraud_stream_decisions_total",
        ":tensorflow:serving:request_count",
    ):
        assert name in names


# --- the dashboard -----------------------------------------------------------------------------


def dashboard(path: Path = DASHBOARD) -> dict:
    return json.loads(path.read_text())


def query_panels(path: Path = DASHBOARD) -> list[dict]:
    return [p for p in dashboard(path)["panels"] if p["type"] != "row"]


def test_both_dashboards_are_there() -> None:
    assert sorted([DASHBOARD, PERFORMANCE]) == DASHBOARDS


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_dashboard_structure(path: Path) -> None:
    dash = dashboard(path)
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for p in query_panels(path):
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip(), p["title"]
            # One variable so the same JSON works in compose and in any cluster's Grafana.
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_covers_the_operational_questions() -> None:
    exprs = {p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in query_panels()}
    everything = " ".join(exprs.values())
    for phi in ("0.5", "0.99"):
        assert f"histogram_quantile({phi}, sum by (le) (rate(fraud_stream_end_to_end" in everything
    expected = {
        "Throughput": "fraud_stream_decided_total",
        "Decisions by type": "by (decision)",
        "Alert and block rate": 'decision=~"review|block"',
        "Score distribution": "fraud_stream_score_bucket",
        "Served model version": "fraud_stream_serving_model_version",
        "Consumer lag": "fraud_stream_consumer_lag",
        "Feature drift": "fraud_drift_",
        "Night excess": "fraud_drift_night_excess_z",
        "Retraining runs": "fraud_retrain_",
    }
    for title, needle in expected.items():
        assert needle in exprs[title], title


def test_model_performance_dashboard_covers_the_analyst_questions() -> None:
    exprs = {
        p["title"]: " ".join(t["expr"] for t in p["targets"]) for p in query_panels(PERFORMANCE)
    }
    expected = {
        "Precision": "fraud_drift_live_precision",
        "Recall": 'fraud="1"',
        "False-positive rate": 'fraud="0"',
        "Average precision": "fraud_quality_average_precision",
        "Fraud money blocked, reviewed, missed": "fraud_quality_labelled_amount_total",
        "Alert rate against the budget": "fraud_drift_expected_alert_rate",
        "Labelled and censored decisions": "fraud_quality_unlabelled_total",
        "Precision by segment": "by (segment, band)",
        "Missed fraud money by segment": 'decision="approve"',
    }
    for title, needle in expected.items():
        assert needle in exprs[title], title


def test_tf_serving_names_exist_in_real_tf_serving() -> None:
    for p in query_panels():
        for t in p["targets"]:
            for name in metric_names(t["expr"]):
                if name.startswith(":tensorflow:"):
                    assert name in TF_SERVING_METRICS, f"{p['title']}: {name}"


def check_panel(panel: dict) -> set[str]:
    """The names a panel queries that no exporter registers."""
    known = exported() | TF_SERVING_METRICS
    wanted = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
    assert wanted, f"{panel['title']}: no metric in its queries"
    return wanted - known


def test_a_misspelt_metric_is_caught() -> None:
    panel = {"title": "t", "targets": [{"expr": "sum(rate(fraud_stream_consumd_total[5m]))"}]}
    assert check_panel(panel) == {"fraud_stream_consumd_total"}


@pytest.mark.parametrize(
    ("path", "title"),
    [(path, p["title"]) for path in DASHBOARDS for p in query_panels(path)],
    ids=lambda v: v.name if isinstance(v, Path) else v,
)
def test_panel_metrics_are_exported(path: Path, title: str) -> None:
    panel = next(p for p in query_panels(path) if p["title"] == title)
    unknown = check_panel(panel)
    assert not unknown, f"{title}: no exporter registers {sorted(unknown)}"
