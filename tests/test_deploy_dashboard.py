"""The Grafana dashboard (k8s/grafana/fraud-dashboard.json) queries only metrics the code exports.

Metric names are pulled out of every panel's PromQL and looked up among the names the
exporters register. The exporters are found, not listed by hand: for every module in
EXPORTER_MODULES that exists, the test collects
* the collectors the module registered in prometheus_client's default REGISTRY on import,
* every CollectorRegistry, metric or collector bound at module level, and
* the registry of every ``*Metrics`` class in the module (instantiated with no arguments; this is
  the pattern of streaming/metrics.py and serving/metrics.py, one registry per instance).

TF Serving itself (production serves with the tensorflow/serving image) exports the names in
TF_SERVING_METRICS; the dashboard may use those, and any ``:tensorflow:`` name it uses must be
one of them, so the panels work against the real server and not only the embedded one.

Panels whose metrics belong to an exporter module that does not exist yet (drift, retraining)
are skipped with the module they wait for; once the module lands, they are enforced.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import json
import re
from functools import cache
from pathlib import Path

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.metrics import MetricWrapperBase

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "k8s/grafana/fraud-dashboard.json"

# Module -> metric-name prefixes it owns. A prefix whose modules are all missing is "pending".
EXPORTER_MODULES: dict[str, tuple[str, ...]] = {
    "streaming.metrics": ("fraud_stream_",),
    "serving.metrics": ("serving_", ":tensorflow:"),
    "monitoring.metrics": ("fraud_drift_", "fraud_retrain_"),
}

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


@cache
def exported() -> tuple[frozenset[str], tuple[str, ...]]:
    """(names the existing exporter modules register, modules that do not exist yet)."""
    before = set(REGISTRY._collector_to_names)  # noqa: SLF001 - only to diff, never mutated
    names: set[str] = set()
    missing = []
    for module_name in EXPORTER_MODULES:
        if importlib.util.find_spec(module_name) is None:
            missing.append(module_name)
            continue
        module = importlib.import_module(module_name)
        for collector in _collectors_of(module):
            names |= sample_names(collector)
    for collector in set(REGISTRY._collector_to_names) - before:  # noqa: SLF001
        names |= sample_names(collector)
    return frozenset(names), tuple(missing)


def test_exporters_register_the_core_families() -> None:
    names, _ = exported()
    for name in (
        "fraud_stream_consumed_total",
        "fraud_stream_end_to_end_latency_seconds_bucket",
        "fraud_stream_decisions_total",
        ":tensorflow:serving:request_count",
    ):
        assert name in names


# --- the dashboard -----------------------------------------------------------------------------


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels() -> list[dict]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_dashboard_structure() -> None:
    dash = dashboard()
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in dash["panels"]:
        pos = p["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, p["title"]
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    for p in query_panels():
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


def test_tf_serving_names_exist_in_real_tf_serving() -> None:
    for p in query_panels():
        for t in p["targets"]:
            for name in metric_names(t["expr"]):
                if name.startswith(":tensorflow:"):
                    assert name in TF_SERVING_METRICS, f"{p['title']}: {name}"


def _owner(name: str) -> list[str]:
    return [m for m, prefixes in EXPORTER_MODULES.items() if name.startswith(prefixes)]


def check_panel(panel: dict) -> tuple[set[str], set[str], list[str]]:
    """(names no exporter registers, names awaiting a missing module, those modules)."""
    names, missing_modules = exported()
    known = names | TF_SERVING_METRICS
    wanted = set().union(*(metric_names(t["expr"]) for t in panel["targets"]))
    assert wanted, f"{panel['title']}: no metric in its queries"
    pending = {n for n in wanted - known if _owner(n) and set(_owner(n)) <= set(missing_modules)}
    modules = sorted({m for n in pending for m in _owner(n)})
    return wanted - known - pending, pending, modules


def test_a_misspelt_metric_is_caught() -> None:
    panel = {"title": "t", "targets": [{"expr": "sum(rate(fraud_stream_consumd_total[5m]))"}]}
    assert check_panel(panel)[0] == {"fraud_stream_consumd_total"}


@pytest.mark.parametrize("title", [p["title"] for p in query_panels()])
def test_panel_metrics_are_exported(title: str) -> None:
    panel = next(p for p in query_panels() if p["title"] == title)
    unknown, pending, modules = check_panel(panel)
    assert not unknown, f"{title}: no exporter registers {sorted(unknown)}"
    if pending:
        pytest.skip(f"{title}: awaits {sorted(pending)} from {', '.join(modules)}")
