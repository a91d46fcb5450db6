"""The analyst's figures of `make run`'s report (app.demo_report) on seeded decisions: exact
per-day precision, recall, fraud money by decision and alert budget, and their plot."""

from __future__ import annotations

import base64
import math

import pandas as pd

from app import demo_report as r
from core import contract as c
from streaming.messages import DecisionFields as D

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
