"""Batch feature engine: the contract's stateful features over a whole dataset, vectorised.

Every window is a pair of binary searches into per-entity sorted keys plus prefix sums, so the
cost is O(n log n) numpy work with no per-row Python.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from core import contract as c
from core.dataio import sort_stream_order

_BIG = np.int64(1) << 40  # entity code * _BIG + relative seconds: one sortable int64 key


def epoch_seconds(ts: pd.Series) -> np.ndarray:
    return (ts.astype("int64") // 1_000_000_000).to_numpy()


def compute_features(df: pd.DataFrame, label_delay_days: int) -> pd.DataFrame:
    """Stateful features for every row of ``df`` (a validated frame with labels), same row order.

    Terminal features use only labels of transactions in [t - delay - w, t - delay): with a label
    delay of ``label_delay_days`` those are exactly the labels known at time t.
    """
    if c.LABEL not in df.columns:
        raise ValueError(
            f"batch features need the '{c.LABEL}' column for terminal risk: pass the labelled "
            "history together with the rows to score"
        )
    n = len(df)
    out = {}
    if n == 0:
        return pd.DataFrame({name: np.zeros(0) for name in c.STATEFUL_FEATURES}, index=df.index)
    # Stream order (timestamp, transaction_id) decides ties, exactly as the streaming engine sees it.
    stream = np.lexsort((df[c.TRANSACTION_ID].to_numpy(), epoch_seconds(df[c.TIMESTAMP])))
    ts_all = epoch_seconds(df[c.TIMESTAMP])
    # Shifted so every key minus the longest look-back stays inside its own entity's range.
    rel = (
        ts_all
        - ts_all.min()
        + (label_delay_days + 2 * c.MAX_GAP_SECONDS // c.SECONDS_PER_DAY) * c.SECONDS_PER_DAY
    )
    amount = df[c.AMOUNT].to_numpy(dtype=np.float64)
    label = df[c.LABEL].to_numpy(dtype=np.float64)

    # Customers: order by (customer, stream order).
    cust_code = pd.factorize(df[c.CUSTOMER_ID])[0].astype(np.int64)
    order = stream[np.argsort(cust_code[stream], kind="stable")]
    key = cust_code[order] * _BIG + rel[order]
    pos = np.arange(n)
    right = pos + 1
    csum = np.concatenate([[0.0], np.cumsum(amount[order])])
    cols: list[str] = []
    feats = np.empty((n, 0))
    lefts = {}
    for w, secs in c.CUSTOMER_WINDOWS.items():
        left = lefts[w] = np.searchsorted(key, key - secs, side="right")
        count = right - left
        cols += [c.customer_count(w), c.customer_mean_amount(w)]
        feats = np.column_stack([feats, count, (csum[right] - csum[left]) / count])
    # High amounts: against the mean of the customer's transactions before this one in the
    # reference window (the current one is the last of its own window, at pos).
    ref = lefts[c.HIGH_AMOUNT_REFERENCE]
    prior_n = pos - ref
    prior_sum = csum[pos] - csum[ref]
    high = (prior_n > 0) & (amount[order] * prior_n > c.HIGH_AMOUNT_CUT * prior_sum)
    hsum = np.concatenate([[0], np.cumsum(high)])
    cols.append(c.CUSTOMER_HIGH_AMOUNT_COUNT)
    feats = np.column_stack([feats, hsum[right] - hsum[lefts[c.HIGH_AMOUNT_WINDOW]]])
    same_prev = np.zeros(n, dtype=bool)
    same_prev[1:] = cust_code[order][1:] == cust_code[order][:-1]
    gap = np.where(same_prev, np.diff(rel[order], prepend=rel[order][0]), c.MAX_GAP_SECONDS)
    cols.append(c.CUSTOMER_SECS_SINCE_PREV)
    feats = np.column_stack([feats, np.minimum(gap, c.MAX_GAP_SECONDS)])
    for j, name in enumerate(cols):
        col = np.empty(n)
        col[order] = feats[:, j]
        out[name] = col

    # Terminals: order by (terminal, time); queries at each row's own time shifted by the delay.
    term_code = pd.factorize(df[c.TERMINAL_ID])[0].astype(np.int64)
    order = np.lexsort((rel, term_code))
    key = term_code[order] * _BIG + rel[order]
    fcs = np.concatenate([[0.0], np.cumsum(label[order])])
    # Queries in key order: sorted look-ups walk memory in order (about 14x faster than row order).
    q_end = key - label_delay_days * c.SECONDS_PER_DAY
    hi = np.searchsorted(key, q_end, side="left")
    los = {}
    for w, secs in c.TERMINAL_WINDOWS.items():
        lo = los[w] = np.searchsorted(key, q_end - secs, side="left")
        count = hi - lo
        frauds = fcs[hi] - fcs[lo]
        for name, values in (
            (c.terminal_count(w), count.astype(np.float64)),
            (c.terminal_fraud_ratio(w), np.where(count > 0, frauds / np.maximum(count, 1), 0.0)),
        ):
            col = np.empty(n)
            col[order] = values
            out[name] = col

    # Streak: the frauds after the latest genuine label of the streak window. ``last_genuine`` is
    # the position of the latest genuine label at or before each position (-1: none yet); ties
    # in time are passed whole (side="right"), so their order in the sort does not matter.
    lo = los[c.FRAUD_STREAK_WINDOW]
    last_genuine = np.maximum.accumulate(np.where(label[order] == 0, np.arange(n), -1))
    latest = np.where(hi > 0, last_genuine[np.maximum(hi - 1, 0)], -1)
    found = latest >= lo
    after = np.searchsorted(key, key[np.maximum(latest, 0)], side="right")
    start = np.where(found, after, lo)
    streak = hi - start
    age = np.where(streak > 0, key - key[np.minimum(start, n - 1)], 0)
    for name, values in ((c.TERMINAL_FRAUD_STREAK, streak), (c.TERMINAL_STREAK_AGE, age)):
        col = np.empty(n)
        col[order] = values.astype(np.float64)
        out[name] = col

    for name, values in _isolated_frauds(cust_code, term_code, rel, label, q_end).items():
        col = np.empty(n)
        col[order] = values
        out[name] = col

    return pd.DataFrame({name: out[name] for name in c.STATEFUL_FEATURES}, index=df.index)


def _isolated_frauds(
    cust_code: np.ndarray,
    term_code: np.ndarray,
    rel: np.ndarray,
    label: np.ndarray,
    q_end: np.ndarray,
) -> dict[str, np.ndarray]:
    """The isolated-fraud counts at the terminal queries ``q_end`` (keys in terminal order).

    A fraud f stops being isolated once a fraud of its card at another terminal, at or after
    ``t_f - CARD_LINK_WINDOW``, is known: at its time ``link_f``. So f counts at the queries E of
    its terminal with ``t_f < E <= min(t_f + w, link_f)``, an interval per fraud: the count at E
    is the intervals begun before E minus those ended before E.
    """
    f = np.flatnonzero(label > 0)
    if not len(f):
        return {
            c.terminal_isolated_frauds(w): np.zeros(len(q_end)) for w in c.ISOLATED_FRAUD_WINDOWS
        }
    card, term, when = cust_code[f], term_code[f], rel[f]
    by_card = np.lexsort((when, card))
    card, term, when = card[by_card], term[by_card], when[by_card]
    m = len(f)
    card_key = card * _BIG + when
    # The card's first fraud in the link window; rel keeps that window inside the card's keys.
    first = np.searchsorted(card_key, card_key - c.TERMINAL_WINDOWS[c.CARD_LINK_WINDOW])
    # Past each position, the first fraud of the card at another terminal: the end of the run of
    # (card, terminal) pairs the position is in, unless the card ends there.
    run_start = np.ones(m, dtype=bool)
    run_start[1:] = (card[1:] != card[:-1]) | (term[1:] != term[:-1])
    run_end = np.flatnonzero(np.append(run_start[1:], True)) + 1
    run_end_at = run_end[np.cumsum(run_start) - 1]
    link = np.where(term[first] != term, first, run_end_at[first])
    safe = np.minimum(link, m - 1)
    linked = (link < m) & (card[safe] == card)
    link_time = np.where(linked, when[safe], np.iinfo(np.int64).max // 2)
    begun = np.sort(term * _BIG + when)
    out = {}
    for w in c.ISOLATED_FRAUD_WINDOWS:
        end = np.maximum(when, np.minimum(when + c.TERMINAL_WINDOWS[w], link_time))
        ended = np.sort(term * _BIG + end)
        count = np.searchsorted(begun, q_end, side="left") - np.searchsorted(
            ended, q_end, side="left"
        )
        out[c.terminal_isolated_frauds(w)] = count.astype(np.float64)
    return out


def build_feature_table(df: pd.DataFrame, label_delay_days: int) -> pd.DataFrame:
    """Raw rows in stream order with their stateful features appended: the training table."""
    df = sort_stream_order(df)
    return pd.concat([df, compute_features(df, label_delay_days)], axis=1)
