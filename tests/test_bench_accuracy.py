"""The accuracy bench's protocol mechanics (the full bench is not part of the suite): the folds'
dates, the removal of cards known compromised, the book's card precision@k, the baseline features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from bench.bench_accuracy import alert_budgets, alert_rates, alert_text
from bench.handbook_protocol import (
    BOOK_FEATURES,
    NIGHT,
    WEEKEND,
    book_features,
    card_precision_at_k,
    ceiling_scores,
    fold_numbers,
    fold_test_rows,
    folds,
    metrics,
)
from components.evaluate.evaluator import GateConfig
from core import contract as c
from core.handbook import AMOUNT_OVER_220, COMPROMISED_CARD, COMPROMISED_TERMINAL
from core.simulator import LEGIT


def _frame(rows: list[tuple[str, str, str, int]]) -> pd.DataFrame:
    """(transaction id, time, card, label) rows as raw transactions."""
    tx, ts, card, label = zip(*rows, strict=True)
    return pd.DataFrame(
        {
            c.TRANSACTION_ID: list(tx),
            c.TIMESTAMP: pd.to_datetime(list(ts), utc=True),
            c.CUSTOMER_ID: list(card),
            c.TERMINAL_ID: "M000001",
            c.AMOUNT: 10.0,
            c.LABEL: np.array(label, dtype=np.int8),
        }
    )


def test_folds_are_the_books_weeks():
    got = [
        tuple(str(t.date()) for t in (f.train_start, f.train_end, f.test_start, f.test_end))
        for f in folds()
    ]
    assert got == [
        ("2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15"),
        ("2018-08-01", "2018-08-08", "2018-08-15", "2018-08-22"),
        ("2018-08-08", "2018-08-15", "2018-08-22", "2018-08-29"),
        ("2018-08-15", "2018-08-22", "2018-08-29", "2018-09-05"),
    ]


def test_fold_numbers_pick_some_of_the_four_folds_and_refuse_others():
    assert fold_numbers("1") == [1]
    assert fold_numbers("3,1,3") == [1, 3]
    assert fold_numbers("1,2,3,4") == [1, 2, 3, 4]
    for bad in ("0", "5", "", "one", "1,x"):
        with pytest.raises(ValueError, match="--folds"):
            fold_numbers(bad)


def test_cards_known_compromised_leave_the_test_days():
    df = _frame(
        [
            ("t1", "2018-07-27T10:00:00Z", "X", 1),  # fraud in training: X known all week
            ("t2", "2018-08-08T10:00:00Z", "X", 0),
            ("t3", "2018-08-14T23:59:59Z", "X", 1),
            ("t4", "2018-08-01T10:00:00Z", "Y", 1),  # delay day 0: known from test day 1 on
            ("t5", "2018-08-08T10:00:00Z", "Y", 0),
            ("t6", "2018-08-09T00:00:00Z", "Y", 0),
            ("t7", "2018-08-07T12:00:00Z", "Z", 1),  # delay day 6: would be known on day 7
            ("t8", "2018-08-14T12:00:00Z", "Z", 1),
            ("t9", "2018-08-08T09:00:00Z", "W", 1),  # test-day frauds are what is measured
            ("t10", "2018-08-10T09:00:00Z", "W", 1),
            ("t11", "2018-08-15T00:00:00Z", "V", 0),  # after the test week
            ("t12", "2018-08-07T23:59:59Z", "V", 0),  # in the delay week
        ]
    )
    test = fold_test_rows(df, folds()[0])
    assert sorted(test[c.TRANSACTION_ID]) == sorted(["t5", "t8", "t9", "t10"])


def test_card_precision_is_the_books():
    # k = 2. Day 1: A and B compromised on top: 2/2, both now found.
    # Day 2: A (found) is left out, so the top 2 are C (fraud) and D: 1/2.
    # Day 3: one card, compromised: 1/2 (divided by k, not by the cards there are).
    rows = [
        ("a1", "2018-08-08T10:00:00Z", "A", 1, 0.9),
        ("a2", "2018-08-08T11:00:00Z", "A", 0, 0.1),
        ("b1", "2018-08-08T12:00:00Z", "B", 1, 0.8),
        ("c1", "2018-08-08T13:00:00Z", "C", 0, 0.05),
        ("a3", "2018-08-09T10:00:00Z", "A", 1, 0.95),
        ("c2", "2018-08-09T11:00:00Z", "C", 1, 0.6),
        ("d1", "2018-08-09T12:00:00Z", "D", 0, 0.3),
        ("f1", "2018-08-10T12:00:00Z", "F", 1, 0.2),
    ]
    df = _frame([r[:4] for r in rows])
    scores = np.array([r[4] for r in rows])
    assert card_precision_at_k(df, scores, k=2) == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    # k = 1: A, then C (A is found), then F: all compromised.
    assert card_precision_at_k(df, scores, k=1) == 1.0


def test_metrics_name_auc_ap_and_card_precision():
    df = _frame(
        [
            ("t1", "2018-08-08T10:00:00Z", "A", 1),
            ("t2", "2018-08-08T11:00:00Z", "B", 0),
            ("t3", "2018-08-08T12:00:00Z", "C", 0),
        ]
    )
    got = metrics(df, np.array([0.9, 0.2, 0.1]))
    brier = got.pop("brier")
    assert got == {"auc_roc": 1.0, "average_precision": 1.0, "card_precision_at_100": 0.01}
    assert brier == pytest.approx((0.1**2 + 0.2**2 + 0.1**2) / 3)


def test_alert_rates_count_blocks_as_review_alerts_and_flag_a_rate_off_budget():
    decisions = pd.Series([c.APPROVE] * 95 + [c.REVIEW] * 4 + [c.BLOCK])
    rates = alert_rates(decisions)
    assert rates == pytest.approx({c.REVIEW: 0.05, c.BLOCK: 0.01})
    text = alert_text(rates, {c.REVIEW: 0.045, c.BLOCK: 0.02})
    assert text.startswith("review 5.00 % (budget 4.50 %), block 1.00 % (budget 2.00 %)")
    assert text.count("OUTSIDE") == 1 and text.endswith("OUTSIDE ±20 %")


def test_alert_budgets_are_the_pipelines_unless_set():
    gate = GateConfig()
    assert alert_budgets([]) == {c.REVIEW: gate.review_budget, c.BLOCK: gate.block_budget}
    assert alert_budgets(["review_budget=0.5"]) == {c.REVIEW: 0.5, c.BLOCK: gate.block_budget}


def test_book_features_are_fifteen_with_its_calendar_flags():
    assert len(BOOK_FEATURES) == 15 and len(set(BOOK_FEATURES)) == 15
    df = _frame(
        [
            ("t1", "2018-07-27T06:59:59Z", "A", 0),  # Friday, night
            ("t2", "2018-07-28T07:00:00Z", "A", 1),  # Saturday, day
            ("t3", "2018-07-29T23:00:00Z", "B", 0),  # Sunday, day for the book
        ]
    )
    table = book_features(df).set_index(c.TRANSACTION_ID)
    assert table[WEEKEND].to_dict() == {"t1": 0.0, "t2": 1.0, "t3": 1.0}
    assert table[NIGHT].to_dict() == {"t1": 1.0, "t2": 0.0, "t3": 0.0}
    assert table.loc["t2", c.customer_count("7d")] == 2
    assert table.loc["t2", c.customer_mean_amount("1d")] == 10.0
    assert set(BOOK_FEATURES) <= set(table.columns) | {c.AMOUNT}


def test_the_ceiling_misses_only_frauds_of_terminal_compromises_not_known_yet():
    # (id, time, terminal, label, pattern). Terminal A's compromise is known once its 2018-08-01
    # fraud is more than the 7-day delay old (the terminal features' [t - 37 d, t - 7 d));
    # terminal B's only known fraud is a stolen card's, and C's compromise fraud of 2018-06-01
    # is out of the 30-day window one second before C's next one.
    rows = [
        ("a1", "2018-08-01T10:00:00Z", "A", 1, COMPROMISED_TERMINAL),
        ("a2", "2018-08-08T10:00:00Z", "A", 1, COMPROMISED_TERMINAL),  # exactly the delay
        ("a3", "2018-08-08T10:00:01Z", "A", 1, COMPROMISED_TERMINAL),
        ("b1", "2018-08-01T10:00:00Z", "B", 1, COMPROMISED_CARD),
        ("b2", "2018-08-10T10:00:00Z", "B", 1, COMPROMISED_TERMINAL),
        ("c1", "2018-06-01T10:00:00Z", "C", 1, COMPROMISED_TERMINAL),
        ("c2", "2018-07-08T10:00:01Z", "C", 1, COMPROMISED_TERMINAL),
        ("c3", "2018-07-09T10:00:00Z", "C", 1, AMOUNT_OVER_220),
        ("c4", "2018-07-09T11:00:00Z", "C", 0, LEGIT),
    ]
    tx, ts, terminal, label, pattern = zip(*rows, strict=True)
    table = pd.DataFrame(
        {
            c.TIMESTAMP: pd.to_datetime(list(ts), utc=True),
            c.TERMINAL_ID: list(terminal),
            c.LABEL: list(label),
            c.FRAUD_PATTERN: list(pattern),
        },
        index=list(tx),
    ).sample(frac=1, random_state=0)
    test = table.loc[["a2", "a3", "b1", "b2", "c2", "c3", "c4"]]
    got = dict(zip(test.index, ceiling_scores(table, test), strict=True))
    assert got == {
        "a2": 0, "a3": 1, "b1": 1, "b2": 0, "c2": 0, "c3": 1, "c4": 0,
    }  # fmt: skip
    # Three of the six frauds first, the other three tied with the genuine row.
    assert roc_auc_score(test[c.LABEL], ceiling_scores(table, test)) == pytest.approx(
        (3 + 3 / 2) / 6
    )
    with pytest.raises(ValueError, match="rows of the table"):
        ceiling_scores(table.drop(index="b1"), test)
