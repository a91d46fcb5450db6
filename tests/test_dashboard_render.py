"""monitoring.dashboard_render's pure parts: the panels and queries of a dashboard, legends; and
the doctests of the modules behind the model performance dashboard. Rendering against a real
Prometheus is in tests/test_monitoring_prometheus.py."""

from __future__ import annotations

import doctest

import pytest

from monitoring import dashboard_render as dr
from monitoring import quality

DASHBOARD = {
    "title": "t",
    "templating": {
        "list": [
            {"name": "datasource", "type": "datasource", "current": {"value": "prometheus"}},
            {"name": "window", "type": "custom", "current": {"value": "1d"}},
        ]
    },
    "panels": [
        {"type": "row", "title": "a row", "gridPos": {"x": 0, "y": 0, "w": 24, "h": 1}},
        {
            "type": "timeseries",
            "title": "Precision",
            "gridPos": {"x": 0, "y": 1, "w": 12, "h": 8},
            "fieldConfig": {"defaults": {"unit": "percentunit"}},
            "targets": [
                {"expr": "sum(increase(x_total[$window]))", "legendFormat": "v{{model_version}}"},
                {"expr": "sum(rate(y_total[$__rate_interval]))"},
            ],
        },
    ],
}


def test_panels_substitute_variables_and_skip_rows() -> None:
    [panel] = dr.panels(DASHBOARD, rate_interval="30s")
    assert panel == dr.Panel(
        "Precision",
        "timeseries",
        {"x": 0, "y": 1, "w": 12, "h": 8},
        "percentunit",
        (("sum(increase(x_total[1d]))", "v{{model_version}}"), ("sum(rate(y_total[30s]))", "")),
    )


def test_no_value_text_and_row_headers() -> None:
    quiet = {
        **DASHBOARD["panels"][1],
        "title": "Retraining runs",
        "fieldConfig": {
            "defaults": {"noValue": "no retrain run in this range"},
            "overrides": [
                {
                    "matcher": {"id": "byName", "options": "drift events"},
                    "properties": [{"id": "custom.axisPlacement", "value": "right"}],
                },
                {
                    "matcher": {"id": "byName", "options": "started"},
                    "properties": [{"id": "color", "value": {"mode": "fixed"}}],
                },
            ],
        },
    }
    dashboard = {**DASHBOARD, "panels": [*DASHBOARD["panels"], quiet]}
    precision, retrains = dr.panels(dashboard, rate_interval="30s")
    assert (precision.no_value, retrains.no_value) == ("", "no retrain run in this range")
    assert (precision.right_axis, retrains.right_axis) == ((), ("drift events",))
    assert dr.rows(dashboard) == [("a row", 0)]


def test_every_committed_dashboard_says_why_its_quiet_panels_are_empty() -> None:
    """The panels a healthy run may leave without series (no retrain, no label yet) carry
    Grafana's noValue text, which the renders show too."""
    import json
    from pathlib import Path

    grafana = Path(__file__).resolve().parents[1] / "k8s" / "grafana"
    explained = {
        panel.title
        for path in grafana.glob("*.json")
        for panel in dr.panels(json.loads(path.read_text()), "1m")
        if panel.no_value
    }
    assert {"Retraining runs", "Precision", "Average precision"} <= explained


@pytest.mark.parametrize(
    ("fmt", "labels", "expected"),
    [
        ("v{{model_version}}", {"model_version": "3"}, "v3"),
        ("{{ segment }}: {{band}}", {"segment": "customer", "band": "new"}, "customer: new"),
        ("", {"b": "2", "a": "1"}, "a=1,b=2"),
        ("", {}, "value"),
    ],
)
def test_legend_follows_grafana(fmt: str, labels: dict[str, str], expected: str) -> None:
    assert dr.legend(fmt, labels) == expected


@pytest.mark.parametrize("module", [dr, quality])
def test_doctests(module) -> None:
    result = doctest.testmod(module)
    assert result.attempted > 0 and result.failed == 0
