"""The Fraud Detection Handbook's prequential protocol and metrics (``bench.bench_accuracy``):
its four folds, each fold's test rows without the cards known compromised, the card
precision@k, the book's 15 baseline features and its two reference models.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from core import contract as c
from core.handbook import COMPROMISED_TERMINAL

FOLD_STARTS = ("2018-07-25", "2018-08-01", "2018-08-08", "2018-08-15")
TRAIN_DAYS = DELAY_DAYS = TEST_DAYS = 7
METRICS = ("auc_roc", "average_precision", "card_precision_at_100")
BRIER = "brier"
# What the table shows: the ranking metrics, then calibration (lower is better, no book figure).
SCORED = (*METRICS, BRIER)
BOOK_WINDOWS = ("1d", "7d", "30d")
WEEKEND, NIGHT = "book_tx_during_weekend", "book_tx_during_night"
# The book's 15 baseline features. Its customer and terminal windows are those of the platform's
# batch feature engine (customer: (t - w, t]; terminal: the w before t - 7 days, fraud share as
# risk), so they are taken from it; its night is 00:00-06:59, not the contract's.
BOOK_FEATURES: tuple[str, ...] = (
    c.AMOUNT,
    WEEKEND,
    NIGHT,
    *(f(w) for w in BOOK_WINDOWS for f in (c.customer_count, c.customer_mean_amount)),
    *(f(w) for w in BOOK_WINDOWS for f in (c.terminal_count, c.terminal_fraud_ratio)),
)
DAY = pd.Timedelta(days=1)


@dataclass(frozen=True)
class Fold:
    """One prequential fold, [start, end) days, UTC."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def folds(starts: tuple[str, ...] = FOLD_STARTS) -> list[Fold]:
    """The folds whose training weeks start on ``starts``."""
    out = []
    for text in starts:
        start = pd.Timestamp(text, tz="UTC")
        train_end = start + TRAIN_DAYS * DAY
        test_start = train_end + DELAY_DAYS * DAY
        out.append(Fold(start, train_end, test_start, test_start + TEST_DAYS * DAY))
    return out


def fold_numbers(text: str) -> list[int]:
    """``--folds``' comma-separated fold numbers (1 to 4), in order, each once."""
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ValueError(f"--folds {text!r}: give fold numbers, e.g. 1 or 1,3") from None
    if not chosen or not set(chosen) <= set(range(1, len(FOLD_STARTS) + 1)):
        raise ValueError(f"--folds {text!r}: fold numbers run from 1 to {len(FOLD_STARTS)}")
    return chosen


def _days(df: pd.DataFrame) -> pd.Series:
    return df[c.TIMESTAMP].dt.floor("D")


def fold_test_rows(df: pd.DataFrame, fold: Fold) -> pd.DataFrame:
    """The fold's test rows: each test day's transactions minus the cards known compromised by
    then. Known are the cards with a fraud in the training week; before test day i, the frauds of
    delay day i - 1 become known too (the book's rule: what is known ``DELAY_DAYS`` earlier)."""
    day = _days(df)
    fraud_cards = df[c.CUSTOMER_ID].where(df[c.LABEL] == 1)
    in_train = (day >= fold.train_start) & (day < fold.train_end)
    known = set(fraud_cards[in_train].dropna())
    parts = []
    for i in range(TEST_DAYS):
        if i > 0:
            known |= set(fraud_cards[day == fold.train_end + (i - 1) * DAY].dropna())
        rows = df[day == fold.test_start + i * DAY]
        parts.append(rows[~rows[c.CUSTOMER_ID].isin(known)])
    return pd.concat(parts)


def card_precision_at_k(df: pd.DataFrame, scores: np.ndarray, k: int = 100) -> float:
    """The book's card precision@k: per day, the k cards with the highest score that day (a card's
    score is its highest, it is compromised if any of its transactions that day is fraud); the
    number of compromised ones divided by k; cards found on an earlier day are left out of the
    later days; the mean over days."""
    frame = pd.DataFrame(
        {
            "day": _days(df).to_numpy(),
            "card": df[c.CUSTOMER_ID].to_numpy(),
            "score": np.asarray(scores, dtype=np.float64),
            "fraud": df[c.LABEL].to_numpy(),
        }
    )
    found: set = set()
    per_day = []
    for _, rows in frame.groupby("day", sort=True):
        rows = rows[~rows["card"].isin(found)]
        cards = rows.groupby("card").agg(score=("score", "max"), fraud=("fraud", "max"))
        top = cards.sort_values("score", ascending=False, kind="stable").head(k)
        hits = top.index[top["fraud"] == 1]
        per_day.append(len(hits) / k)
        found.update(hits)
    return float(np.mean(per_day)) if per_day else float("nan")


def metrics(df: pd.DataFrame, scores: np.ndarray) -> dict[str, float]:
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = df[c.LABEL].to_numpy()
    return {
        "auc_roc": float(roc_auc_score(y, scores)),
        "average_precision": float(average_precision_score(y, scores)),
        "card_precision_at_100": card_precision_at_k(df, scores, 100),
        BRIER: float(np.mean((np.asarray(scores, dtype=np.float64) - y) ** 2)),
    }


def book_features(df: pd.DataFrame) -> pd.DataFrame:
    """The feature table (raw rows in stream order + the platform's window features) with the
    book's weekend and night flags added."""
    from core.features.batch import build_feature_table

    table = build_feature_table(df, DELAY_DAYS)
    ts = table[c.TIMESTAMP]
    return table.assign(
        **{WEEKEND: (ts.dt.dayofweek >= 5).astype(float), NIGHT: (ts.dt.hour <= 6).astype(float)}
    )


CEILING = "ceiling (oracle)"


def ceiling_scores(table: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """An oracle's scores for ``test`` (rows of ``table``, by index): 1 for every fraud but those
    on a compromised terminal whose compromise is not known yet, 0 for those and the genuine ones.

    Known is a compromised-terminal fraud on the same terminal in its longest window ending the
    label delay before, as the terminal features see labels. Until one is, that terminal's frauds
    are genuine payments of genuine cards at a terminal drawn at random: in every field and
    feature they look like the rest, whatever other frauds (a stolen card passing by, a large
    amount) the terminal had. Any model's expected metrics are at most this oracle's: with the
    book's 7-day delay the first week of each terminal compromise is out of every model's sight.
    """
    from core.features.batch import epoch_seconds

    rows = table.index.get_indexer(test.index)
    if (rows < 0).any():
        raise ValueError("ceiling_scores: test rows must be rows of the table (by index)")
    ts = epoch_seconds(table[c.TIMESTAMP])
    terminal = pd.factorize(table[c.TERMINAL_ID])[0].astype(np.int64)
    # One sortable key per (terminal, time); times are epoch seconds, far below 2**40.
    key = terminal * (1 << 40) + ts
    compromise = (table[c.FRAUD_PATTERN] == COMPROMISED_TERMINAL).to_numpy()
    known_keys = np.sort(key[compromise])
    end = key[rows] - DELAY_DAYS * c.SECONDS_PER_DAY
    window = max(c.TERMINAL_WINDOWS.values())
    known = np.searchsorted(known_keys, end, "left") - np.searchsorted(
        known_keys, end - window, "left"
    )
    unseen = compromise[rows] & (known == 0)
    return ((test[c.LABEL].to_numpy() == 1) & ~unseen).astype(np.float64)


def reference_scores(table: pd.DataFrame, fold: Fold, test: pd.DataFrame) -> dict[str, np.ndarray]:
    """Scores of the book's two baselines on ``test``, trained on the fold's training week."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    day = _days(table)
    train = table[(day >= fold.train_start) & (day < fold.train_end)]
    scaler = StandardScaler().fit(train[list(BOOK_FEATURES)])
    x_train = scaler.transform(train[list(BOOK_FEATURES)])
    x_test = scaler.transform(test[list(BOOK_FEATURES)])
    y = train[c.LABEL].to_numpy()
    models = {
        "logistic regression": LogisticRegression(random_state=0, max_iter=1000),
        "random forest": RandomForestClassifier(
            n_estimators=100, max_depth=20, random_state=0, n_jobs=2
        ),
    }
    return {name: m.fit(x_train, y).predict_proba(x_test)[:, 1] for name, m in models.items()}
