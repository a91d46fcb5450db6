"""`make run`'s report (app.demo_report): the analyst's figures on seeded decisions (exact per-day
precision, recall, fraud money by decision and alert budget, and their plot), and the rollout
part of the summary (the shadow comparison, "trigger -> canary serving" and "trigger ->
promoted") from records shaped as the consumer and the retrain trigger write them."""

from __future__ import annotations

import base64
import math

import pandas as pd
import pytest

from app import demo_report as r
from core import contract as c
from monitoring.canary import EVENT, PROMOTED, SHADOW_STARTED, VERDICT
from monitoring.retrain_history import PUSHED, STARTED
from streaming.messages import DecisionFields as D
from streaming.messages import ShadowFields as f

# day, version, decision, fraud, amount
ROWS = [
    (0, "1", c.BLOCK, 1, 100.0),
    (0, "1", c.REVIEW, 0, 20.0),
    (0, "1", c.APPROVE, 1, 30.0),
    (0, "1", c.APPROVE, 0, 5.0),
    (1, "1", c.REVIEW, 1, 40.0),
    (1, "2", c.APPROVE, 0, 7.0),
    (1, "2", c.APPROVE, 0, 8.0),
]


def joined() -> pd.DataFrame:
    day0 = pd.Timestamp("2025-01-01T10:00:00Z")
    return pd.DataFrame(
        {
            c.TIMESTAMP: [day0 + pd.Timedelta(days=d) for d, *_ in ROWS],
            D.MODEL_VERSION: [v for _, v, *_ in ROWS],
            D.DECISION: [x for _, _, x, _, _ in ROWS],
            c.LABEL: [f for *_, f, _ in ROWS],
            c.AMOUNT: [a for *_, a in ROWS],
        }
    )


def test_analyst_figures_per_day_and_version() -> None:
    figures = r.analyst_figures(joined(), {"1": 0.25, "2": 0.5})
    by_key = figures.set_index([figures["day"].dt.strftime("%m-%d"), "version"])
    first = by_key.loc[("01-01", "1")]
    assert (first["transactions"], first["alerts"], first["frauds"], first["caught"]) == (
        4,
        2,
        2,
        1,
    )
    assert (first["precision"], first["recall"]) == (0.5, 0.5)
    assert (first["blocked"], first["reviewed"], first["missed"]) == (100.0, 0.0, 30.0)
    assert first["budget"] == 1.0
    second = by_key.loc[("01-02", "1")]
    assert (second["precision"], second["recall"], second["reviewed"]) == (1.0, 1.0, 40.0)
    assert second["budget"] == 0.25
    quiet = by_key.loc[("01-02", "2")]
    # No alert and no fraud: neither ratio is defined (a gap, not a zero, on the plot).
    assert math.isnan(quiet["precision"]) and math.isnan(quiet["recall"])
    assert quiet["budget"] == 1.0
    assert len(figures) == 3


def test_a_version_without_budget_has_none() -> None:
    figures = r.analyst_figures(joined(), {"1": 0.25})
    assert figures.loc[figures["version"] == "2", "budget"].isna().all()


def test_analyst_plot_is_a_png() -> None:
    png = base64.b64decode(r.analyst_plot(r.analyst_figures(joined(), {"1": 0.25, "2": 0.5})))
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_join_truth_takes_the_amount_from_the_truth() -> None:
    truth = joined().assign(**{c.TRANSACTION_ID: [f"t{i}" for i in range(len(ROWS))]})
    decisions = truth.drop(columns=[c.LABEL, c.AMOUNT])
    assert r.join_truth(decisions, truth)[c.AMOUNT].tolist() == [a for *_, a in ROWS]


T0 = "2026-12-06T03:10:00"  # the retrain history's naive UTC start


def shadow_record(ids: list[str], stable: list[str], canary: list[str], at: str) -> dict:
    return {
        f.STABLE_VERSION: 1,
        f.CANARY_VERSION: 2,
        f.TRANSACTION_IDS: ids,
        f.STABLE_SCORES: [0.5] * len(ids),
        f.CANARY_SCORES: [0.5] * len(ids),
        f.STABLE_DECISIONS: stable,
        f.CANARY_DECISIONS: canary,
        f.CANARY_MS: 3.0,
        f.SHADOWED_AT: at,
    }


def rollout_event(kind: str, at: str) -> dict:
    return {"event": EVENT, "kind": kind, "canary_version": 2, "detected_at": at}


HISTORY = [
    {"status": STARTED, "run_id": "r1", "started_at": T0},
    {"status": PUSHED, "run_id": "r1", "version": 2, "serving": "canary"},
]
A, R = c.APPROVE, c.REVIEW
SHADOW = [
    # t4 is shadowed twice (at-least-once): counted once.
    shadow_record(["t1", "t2", "t3", "t4"], [R, A, A, R], [R, R, A, A], "2026-12-06T03:11:30Z"),
    shadow_record(["t4", "t5"], [R, A], [A, R], "2026-12-06T03:11:31.5Z"),
]
EVENTS = [
    {"event": "drift", "sustained": True, "window_end": "2025-03-01T00:00:00Z"},
    rollout_event(SHADOW_STARTED, "2026-12-06T03:11:30.2Z"),
    rollout_event(VERDICT, "2026-12-06T03:11:40Z"),
    rollout_event(PROMOTED, "2026-12-06T03:11:42Z"),
]
TRUTH = pd.DataFrame({c.TRANSACTION_ID: ["t1", "t2", "t3", "t4", "t5"], c.LABEL: [1, 1, 0, 0, 1]})


def test_both_figures_are_reported_and_canary_serving_comes_first() -> None:
    figures = r.rollout_figures(HISTORY, SHADOW, EVENTS)
    assert figures["canary_version"] == 2
    assert figures["trigger_to_canary_s"] == pytest.approx(90.0)
    assert figures["trigger_to_promoted_s"] == pytest.approx(102.0)
    assert figures["trigger_to_canary_s"] <= figures["trigger_to_promoted_s"]
    assert figures["promoted_at"] == "2026-12-06T03:11:42Z"
    assert [e["kind"] for e in figures["rollout_steps"]] == [SHADOW_STARTED, VERDICT, PROMOTED]


def test_without_a_promotion_the_figure_says_so() -> None:
    figures = r.rollout_figures(HISTORY, SHADOW, EVENTS[:3])
    assert figures["trigger_to_canary_s"] is not None and figures["trigger_to_promoted_s"] is None
    rows = dict(r.summary_rows({**base_summary(), **figures}))
    assert rows["retrain trigger -> promoted (s)"] == "n/a"
    assert rows["canary promoted at (wall clock)"] == "not promoted"


def test_shadow_comparison_pairs_both_versions_on_the_same_labelled_transactions() -> None:
    (pair,) = r.shadow_comparison(SHADOW, TRUTH)
    assert (pair["stable_version"], pair["canary_version"]) == (1, 2)
    assert (pair["transactions"], pair["frauds"]) == (5, 3)
    # Stable alerts on t1 and t4 (t1 a fraud), the canary on t1, t2 and t5 (all frauds).
    assert pair["stable"] == pytest.approx({"precision": 0.5, "recall": 1 / 3, "alert_rate": 0.4})
    assert pair["canary"] == pytest.approx({"precision": 1.0, "recall": 1.0, "alert_rate": 0.6})


def base_summary() -> dict:
    return {
        "scored": 5,
        "duplicates": 0,
        "throughput": None,
        "p50_ms": None,
        "p99_ms": None,
        "alerts": 2,
        "phases": [],
        "onset": "2025-03-01T00:00:00Z",
        "detected_at": None,
        "false_alarms_before_onset": 0,
        "detection_delay_h": None,
        "trigger_to_serving_s": 110.0,
        "recovery_ratio": None,
    }


def test_the_table_shows_the_figures_in_order_and_the_shadow_comparison() -> None:
    summary = {
        **base_summary(),
        **r.rollout_figures(HISTORY, SHADOW, EVENTS),
        "shadow": r.shadow_comparison(SHADOW, TRUTH),
    }
    rows = r.summary_rows(summary)
    names = [k for k, _ in rows]
    canary = names.index("retrain trigger -> canary serving (shadow) (s)")
    promoted = names.index("retrain trigger -> promoted (s)")
    deciding = names.index("retrain trigger -> new model deciding (s)")
    assert canary < promoted < deciding
    assert [rows[i][1] for i in (canary, promoted, deciding)] == ["90", "102", "110"]
    table = dict(rows)
    pair = "shadow: canary v2 vs stable v1"
    assert table[f"{pair}, paired transactions (frauds)"] == "5 (3)"
    assert table[f"{pair}, precision"] == "0.500 vs 1.000"
    assert table[f"{pair}, recall"] == "0.333 vs 1.000"
    assert table[f"{pair}, alert rate"] == "40.0% vs 60.0%"


def test_the_table_says_why_no_dashboard_was_rendered() -> None:
    reason = "prometheus is not on PATH: make tools installs it"
    unrendered = {"rendered": [], "empty_panels": {}, "reason": reason}
    rows = r.summary_rows({**base_summary(), "dashboards": unrendered})
    assert dict(rows)["Grafana dashboards"] == reason


def test_the_report_embeds_the_rendered_dashboards_and_the_table_says_where(tmp_path) -> None:
    dashboards = tmp_path / "dashboards"
    dashboards.mkdir()
    pngs = []
    for name in ("fraud-dashboard", "model-performance-dashboard"):
        png = dashboards / f"{name}.png"
        png.write_bytes(base64.b64decode(r.analyst_plot(r.analyst_figures(joined(), {"1": 0.25}))))
        pngs.append(png)
    rendered = {"rendered": [str(p) for p in pngs], "empty_panels": {}, "reason": None}
    rows = r.summary_rows({**base_summary(), "dashboards": rendered})
    assert dict(rows)["Grafana dashboards"] == f"2 rendered in {dashboards}"
    page = r.write_html(tmp_path / "report.html", rows, {}, [], pngs).read_text()
    for png in pngs:
        assert f"<h3>{png.stem}</h3>" in page
        assert base64.b64encode(png.read_bytes()).decode() in page
