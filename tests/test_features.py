"""The two feature engines: parity, restart, bounded memory, no label leakage, exact values."""

from __future__ import annotations

import re

import numpy as np
import orjson
import pandas as pd
import pytest

from core import contract as c
from core.features import stream as stream_module
from core.features.batch import build_feature_table, compute_features, epoch_seconds
from core.features.stream import StreamingFeatureEngine
from core.simulator import LEGIT, SimulationConfig, simulate
from core.statefile import StateFileError

RTOL, ATOL = 1e-9, 1e-6
DELAY = c.DEFAULT_LABEL_DELAY_DAYS
DAY = c.SECONDS_PER_DAY
T0 = pd.Timestamp("2025-01-01T00:00:00Z")

# Few terminals per customer, so terminal windows are well filled; drift adds a fifth pattern.
PARITY_CONFIG = SimulationConfig(
    n_customers=300, n_terminals=200, n_days=90, seed=3, drift_day=50, label_delay_days=DELAY
)


@pytest.fixture(scope="module")
def parity_frame() -> pd.DataFrame:
    return simulate(PARITY_CONFIG)


def _events(df: pd.DataFrame, delay_days: int) -> list[tuple[int, int]]:
    """(kind, row) in arrival order: the label of row i at label_available_at (or ts + delay),
    transactions in stream order, a label before a transaction at the same time. kind 0 = label,
    1 = transaction."""
    ts = epoch_seconds(df[c.TIMESTAMP])
    if c.LABEL_AVAILABLE_AT in df.columns:
        available = epoch_seconds(df[c.LABEL_AVAILABLE_AT])
    else:
        available = ts + delay_days * DAY
    stream_pos = np.empty(len(df), dtype=np.int64)
    stream_pos[np.lexsort((df[c.TRANSACTION_ID].to_numpy(), ts))] = np.arange(len(df))
    times = np.concatenate([available, ts])
    kinds = np.concatenate([np.zeros(len(df), np.int64), np.ones(len(df), np.int64)])
    rows = np.concatenate([np.arange(len(df)), np.arange(len(df))])
    sequence = np.concatenate([np.arange(len(df)), stream_pos])
    order = np.lexsort((sequence, kinds, times))
    return list(zip(kinds[order].tolist(), rows[order].tolist(), strict=True))


def _feed(engine, df, events, results: dict[int, dict[str, float]]) -> None:
    ts = epoch_seconds(df[c.TIMESTAMP]).tolist()
    cust = df[c.CUSTOMER_ID].tolist()
    term = df[c.TERMINAL_ID].tolist()
    amount = df[c.AMOUNT].tolist()
    label = df[c.LABEL].tolist()
    for kind, i in events:
        if kind == 0:
            engine.add_label(term[i], cust[i], ts[i], label[i])
        else:
            results[i] = engine.update(cust[i], term[i], ts[i], amount[i])


def _stream_features(df, delay_days, engine=None) -> pd.DataFrame:
    engine = engine or StreamingFeatureEngine(delay_days)
    results: dict[int, dict[str, float]] = {}
    _feed(engine, df, _events(df, delay_days), results)
    return _as_frame(results, df)


def _as_frame(results, df) -> pd.DataFrame:
    return pd.DataFrame([results[i] for i in range(len(df))], index=df.index)[
        list(c.STATEFUL_FEATURES)
    ]


def _assert_parity(batch: pd.DataFrame, stream: pd.DataFrame) -> None:
    assert list(batch.columns) == list(c.STATEFUL_FEATURES)
    for name in c.STATEFUL_FEATURES:
        np.testing.assert_allclose(
            stream[name].to_numpy(), batch[name].to_numpy(), rtol=RTOL, atol=ATOL, err_msg=name
        )


# --- parity -------------------------------------------------------------------------------------


def test_parity_batch_vs_stream_with_snapshot_restore(parity_frame):
    df = parity_frame
    batch = compute_features(df, DELAY)
    events = _events(df, DELAY)
    half = len(events) // 2

    engine = StreamingFeatureEngine(DELAY)
    uninterrupted: dict[int, dict[str, float]] = {}
    _feed(engine, df, events[:half], uninterrupted)
    blob = engine.snapshot()
    # The snapshot holds evicted prefixes and compacted sums, and comes back bit for bit.
    assert any(orjson.loads(blob)["customers"]["heads"])
    assert StreamingFeatureEngine.restore(blob).snapshot() == blob
    _feed(engine, df, events[half:], uninterrupted)
    _assert_parity(batch, _as_frame(uninterrupted, df))

    # A restart from the mid-stream snapshot continues exactly like the uninterrupted engine.
    restored = StreamingFeatureEngine.restore(blob)
    after: dict[int, dict[str, float]] = {}
    _feed(restored, df, events[half:], after)
    assert after and after == {i: uninterrupted[i] for i in after}
    assert restored.size == engine.size

    # The stream covers every pattern and the terminal features are not trivially zero.
    assert set(df[c.FRAUD_PATTERN]) > {LEGIT}
    for w in c.TERMINAL_WINDOWS:
        assert (batch[c.terminal_fraud_ratio(w)] > 0).mean() > 0.01, w
    shortest = min(c.CUSTOMER_WINDOWS, key=c.CUSTOMER_WINDOWS.__getitem__)
    assert (batch[c.customer_count(shortest)] > 1).any()  # bursts within the shortest window
    assert (batch[c.CUSTOMER_HIGH_AMOUNT_COUNT] > 1).any()
    assert (batch[c.TERMINAL_FRAUD_STREAK] > 1).any()
    assert (batch[c.TERMINAL_STREAK_AGE] > DELAY * DAY).any()


def test_parity_on_shuffled_input_and_other_delay(parity_frame):
    df = parity_frame[parity_frame[c.TIMESTAMP] < T0 + pd.Timedelta(days=40)]
    df = df.drop(columns=[c.LABEL_AVAILABLE_AT]).sample(frac=1.0, random_state=1)
    delay = 2
    batch = compute_features(df, delay)
    assert (batch.index == df.index).all()  # same rows, same order as the input
    _assert_parity(batch, _stream_features(df, delay))
    table = build_feature_table(df, delay)
    assert list(table.columns) == [*df.columns, *c.STATEFUL_FEATURES]
    assert table[c.TIMESTAMP].is_monotonic_increasing


def test_snapshot_format_and_version_are_checked():
    engine = StreamingFeatureEngine()
    engine.update("C1", "M1", 100, 12.5)
    engine.add_label("M1", "C1", 50, 1)
    doc = orjson.loads(engine.snapshot())
    assert (doc["format"], doc["version"]) == ("fraud-feature-engine-state", 4)
    assert doc["customers"]["hsum"] == [[0, 0]]
    refused = {
        "fraud-feature-engine-state version 1, this release reads version "
        f"{stream_module.SNAPSHOT_VERSION} only": {"version": 1},
        "format 'fraud-partition-snapshot', expected 'fraud-feature-engine-state'": {
            "format": "fraud-partition-snapshot"
        },
        "malformed fraud-feature-engine-state document (ValueError('customers: 3 sums for 1 ": {
            "customers": {**doc["customers"], "csum": "A" * 32}  # 24 bytes: 3 doubles
        },
        "every hsum list must be one longer than its ts list": {
            "customers": {**doc["customers"], "hsum": [[0]]}
        },
        "customers.ts must be lists of integers": {
            "customers": {**doc["customers"], "ts": [["100"]]}
        },
        "terminals: ids, ts, fraud and cards lists differ in length": {
            "terminals": {**doc["terminals"], "fraud": [[1, 0]]}
        },
        "terminals.cards must be lists of strings": {
            "terminals": {**doc["terminals"], "cards": [[1]]}
        },
        "card_frauds: ids, ts and terminals lists differ in length": {
            "card_frauds": {**doc["card_frauds"], "terminals": [[]]}
        },
        "terminals: frauds of cards missing from card_frauds: ['C1']": {
            "card_frauds": {"ids": [], "ts": [], "terminals": []}
        },
    }
    for message, change in refused.items():
        with pytest.raises(StateFileError, match=f"^snap-1: .*{re.escape(message)}"):
            StreamingFeatureEngine.restore(orjson.dumps({**doc, **change}), where="snap-1")
    with pytest.raises(StateFileError, match="snap-1: not a fraud-feature-engine-state document"):
        StreamingFeatureEngine.restore(b"{", where="snap-1")


# --- eviction -------------------------------------------------------------------------------


def _churn_stream(n_days: int = 200, cohort: int = 8, active_days: int = 4) -> pd.DataFrame:
    """Customers and terminals that come, shop a few days and never return, plus one regular
    customer who shops four times a day at one terminal throughout."""
    rng = np.random.default_rng(0)
    rows = []
    for day in range(n_days):
        for k in range(cohort):
            who = day * cohort + k
            for d in range(active_days):
                for secs in rng.integers(0, DAY, 3):
                    terminal = f"M{who % (cohort * 3)}-{day // 3}"
                    rows.append(((day + d) * DAY + int(secs), f"C{who}", terminal))
        rows += [
            (day * DAY + int(secs), "regular", "M-regular") for secs in rng.integers(0, DAY, 4)
        ]
    secs, customers, terminals = zip(*rows, strict=True)
    n = len(rows)
    return _tx(
        list(
            zip(
                [f"X{i:08d}" for i in range(n)],
                secs,
                customers,
                terminals,
                rng.uniform(1, 100, n).round(2),
                (rng.random(n) < 0.05).astype(int),
                strict=True,
            )
        )
    )


def test_eviction_bounds_memory_and_keeps_parity(monkeypatch):
    df = _churn_stream()
    monkeypatch.setattr(stream_module, "_EVICT_EVERY", 250)
    engine = StreamingFeatureEngine(DELAY)
    events = _events(df, DELAY)
    results: dict[int, dict[str, float]] = {}
    peak = dict.fromkeys(
        ("customers", "terminals", "cards_with_frauds", "regular_history", "regular_labels"), 0
    )
    for start in range(0, len(events), 500):
        _feed(engine, df, events[start : start + 500], results)
        for key, value in engine.size.items():
            peak[key] = max(peak[key], value)
        if "regular" in engine._customers:
            peak["regular_history"] = max(
                peak["regular_history"], len(engine._customers["regular"].ts)
            )
        if "M-regular" in engine._terminals:
            peak["regular_labels"] = max(
                peak["regular_labels"], len(engine._terminals["M-regular"].ts)
            )
    _assert_parity(compute_features(df, DELAY), _as_frame(results, df))

    n_customers, n_terminals = df[c.CUSTOMER_ID].nunique(), df[c.TERMINAL_ID].nunique()
    # A customer is kept for the longest window after its last transaction, a terminal for that
    # plus the label delay after its last label; eviction runs every few simulated days here.
    horizon = c.MAX_GAP_SECONDS // DAY
    evict_lag = 5  # days of transactions between two sweeps, rounded up
    assert peak["customers"] <= 8 * (horizon + 4 + evict_lag) + 1
    assert peak["customers"] < n_customers / 4
    assert peak["terminals"] < n_terminals / 2
    # A card's frauds are kept for the card-link window longer than a terminal's labels.
    assert 0 < peak["cards_with_frauds"] < n_customers / 4
    # A long-lived customer's and terminal's state are bounded by the window too.
    assert peak["regular_history"] <= 2 * 4 * (horizon + evict_lag)
    assert peak["regular_labels"] <= 4 * (horizon + DELAY + evict_lag)


# --- leakage --------------------------------------------------------------------------------


def test_batch_uses_no_label_before_it_is_available(default_like):
    df = default_like
    base = compute_features(df, DELAY)
    ts = df[c.TIMESTAMP]
    available = df[c.LABEL_AVAILABLE_AT]
    changed_later = 0
    for q in (0.2, 0.45, 0.7, 0.95):
        t = ts.quantile(q)
        flipped = df.copy()
        unknown = available > t
        flipped.loc[unknown, c.LABEL] = 1 - flipped.loc[unknown, c.LABEL]
        feats = compute_features(flipped, DELAY)
        known = (ts <= t).to_numpy()
        pd.testing.assert_frame_equal(feats[known], base[known], check_exact=True)
        changed_later += int((feats[~known] != base[~known]).to_numpy().any())
    assert changed_later >= 3  # the flips do matter once the labels are available


def _tx(rows: list[tuple]) -> pd.DataFrame:
    """Raw frame from (id, seconds after T0, customer, terminal, amount, label)."""
    df = pd.DataFrame(rows, columns=list(c.RAW_FIELDS))
    df[c.TIMESTAMP] = T0 + pd.to_timedelta(df[c.TIMESTAMP], unit="s")
    return df


def _both(df: pd.DataFrame, delay_days: int) -> list[pd.DataFrame]:
    return [compute_features(df, delay_days), _stream_features(df, delay_days)]


@pytest.mark.parametrize("delay_days", [DELAY, 1])
def test_fraud_reaches_terminal_ratio_exactly_after_label_delay(delay_days):
    delay = delay_days * DAY
    fraud_at = 40 * DAY + 5_000
    offsets = [-1, 0, 1, DAY - 1, DAY, DAY + 1, 7 * DAY, 7 * DAY + 1, 30 * DAY, 30 * DAY + 1]
    rows = [
        ("A0", fraud_at - 3_600, "legit", "M1", 10.0, 0),
        ("A1", fraud_at, "thief", "M1", 500.0, 1),
    ]
    # Probes on the terminal, by customers of their own. Their own (legit) labels count too once
    # available, which only matters for the long windows with a short delay.
    rows += [
        (f"P{k:02d}", fraud_at + delay + o, f"probe{k}", "M1", 1.0, 0)
        for k, o in enumerate(offsets)
    ]
    feats = _both(_tx(rows), delay_days)

    def expect(offset: int, window: int) -> tuple[int, float]:
        # Window [t - delay - w, t - delay) with t = fraud_at + delay + offset.
        lo, hi = fraud_at + offset - window, fraud_at + offset
        labels = [lab for _, at, _, _, _, lab in rows if lo <= at < hi]
        return len(labels), (sum(labels) / len(labels) if labels else 0.0)

    for k, offset in enumerate(offsets):
        i = 2 + k
        for w, secs in c.TERMINAL_WINDOWS.items():
            count, ratio = expect(offset, secs)
            for engine in feats:
                assert engine.loc[i, c.terminal_count(w)] == count, (offset, w)
                assert engine.loc[i, c.terminal_fraud_ratio(w)] == pytest.approx(ratio)
    # Never earlier than label_delay after the fraud; from just after it, in every window.
    for engine in feats:
        ratios = engine[[c.terminal_fraud_ratio(w) for w in c.TERMINAL_WINDOWS]].to_numpy()
        assert (ratios[2:4] == 0).all()  # at label_delay - 1 s and exactly label_delay
        assert (ratios[4] == 0.5).all()  # 1 s later


# --- exact hand-computed values ---------------------------------------------------------------


def test_customer_windows_by_hand():
    hour = 3_600
    rows = [
        ("T1", 0, "A", "M1", 10.0, 0),
        ("T2", 1_800, "A", "M2", 20.0, 0),
        ("B1", 1_000, "B", "M1", 1_000.0, 1),  # another customer: never mixed in
        ("T4", 2 * DAY, "A", "M1", 30.0, 0),  # same time as T3: after it by id
        ("T3", 2 * DAY, "A", "M1", 60.0, 0),
        ("T5", 40 * DAY, "A", "M1", 5.0, 0),
        ("D1", 0, "D", "M3", 4.0, 0),
        ("D2", hour, "D", "M3", 8.0, 0),  # exactly 1h later: the 1h window (t-1h, t] drops D1
    ]
    gap_cap = c.MAX_GAP_SECONDS
    # id -> (counts 1h/1d/7d/30d, means 1h/1d/7d/30d, seconds since previous)
    expected = {
        "T1": ((1, 1, 1, 1), (10, 10, 10, 10), gap_cap),
        "T2": ((2, 2, 2, 2), (15, 15, 15, 15), 1_800),
        "B1": ((1, 1, 1, 1), (1_000,) * 4, gap_cap),
        "T3": ((1, 1, 3, 3), (60, 60, 30, 30), 2 * DAY - 1_800),
        "T4": ((2, 2, 4, 4), (45, 45, 30, 30), 0),
        "T5": ((1, 1, 1, 1), (5, 5, 5, 5), gap_cap),  # 38 days later: gap capped at 30 days
        "D1": ((1, 1, 1, 1), (4, 4, 4, 4), gap_cap),
        "D2": ((1, 2, 2, 2), (8, 6, 6, 6), hour),
    }
    df = _tx(rows)
    for feats in _both(df, DELAY):
        for i, tid in enumerate(df[c.TRANSACTION_ID]):
            counts, means, gap = expected[tid]
            got = feats.loc[i]
            for w, count, mean in zip(c.CUSTOMER_WINDOWS, counts, means, strict=True):
                assert got[c.customer_count(w)] == count, (tid, w)
                assert got[c.customer_mean_amount(w)] == pytest.approx(mean), (tid, w)
            assert got[c.CUSTOMER_SECS_SINCE_PREV] == gap, tid
            # No label is ever available within the label delay of the first transaction.
            for w in c.TERMINAL_WINDOWS:
                assert got[c.terminal_count(w)] == 0
                assert got[c.terminal_fraud_ratio(w)] == 0


def test_terminal_windows_by_hand():
    # Terminal M1: labelled history on days 0..9, queried on day 20 with a 7-day delay, so the
    # windows end at day 13 (exclusive): 1d = [12, 13), 7d = [6, 13), 30d = [-17, 13).
    history = [(f"H{d}", d * DAY + 100, f"c{d}", "M1", 1.0, int(d in (3, 7, 8))) for d in range(10)]
    query = [("Q", 20 * DAY, "q", "M1", 1.0, 0), ("R", 20 * DAY, "r", "M2", 1.0, 0)]
    df = _tx(history + query)
    for feats in _both(df, DELAY):
        q, r = feats.iloc[-2], feats.iloc[-1]
        # 1d: nothing on day 12; 7d: days 6..9 (frauds on 7, 8); 30d: all ten (three frauds).
        assert [q[c.terminal_count(w)] for w in c.TERMINAL_WINDOWS] == [0, 4, 10]
        assert [q[c.terminal_fraud_ratio(w)] for w in c.TERMINAL_WINDOWS] == pytest.approx(
            [0.0, 0.5, 0.3]
        )
        # Another terminal knows nothing of M1's history.
        assert [r[c.terminal_count(w)] for w in c.TERMINAL_WINDOWS] == [0, 0, 0]


def test_high_amount_count_by_hand():
    rows = [
        ("a1", 0, "A", "M1", 10.0, 0),  # no history: never high
        ("a2", 3_600, "A", "M1", 30.0, 0),  # exactly 3x the mean before it: not above
        ("a3", 7_200, "A", "M1", 31.0, 0),  # mean before 20
        ("a4", DAY, "A", "M1", 200.0, 0),  # mean before 23.67: high
        ("a5", 2 * DAY, "A", "M1", 250.0, 0),  # mean before 67.75: high
        ("a6", 9 * DAY, "A", "M1", 1_000.0, 0),  # high; a5 is exactly 7 days back: outside
        ("a7", 40 * DAY, "A", "M1", 5.0, 0),  # no transaction in the 30 days before it
        ("b1", DAY, "B", "M1", 1.0, 0),  # another customer's history is not A's
        ("b2", DAY + 60, "B", "M1", 9.0, 0),
    ]
    expected = {"a1": 0, "a2": 0, "a3": 0, "a4": 1, "a5": 2, "a6": 1, "a7": 0, "b1": 0, "b2": 1}
    assert c.HIGH_AMOUNT_FACTOR == 3.0
    assert (c.HIGH_AMOUNT_REFERENCE, c.HIGH_AMOUNT_WINDOW) == ("30d", "7d")
    df = _tx(rows)
    for feats in _both(df, DELAY):
        got = dict(zip(df[c.TRANSACTION_ID], feats[c.CUSTOMER_HIGH_AMOUNT_COUNT], strict=True))
        assert got == expected


def test_terminal_fraud_streak_and_its_age_by_hand():
    # Queried on day 20 with a 7-day delay: labels before day 13 count, back to day -17.
    def history(terminal: str, frauds: set[int], days=range(10)) -> list[tuple]:
        return [
            (f"{terminal}-{d}", d * DAY + 100, f"c{d}", terminal, 1.0, int(d in frauds))
            for d in days
        ]

    tied = 5 * DAY + 100
    rows = [
        *history("M1", {7, 8, 9}),  # three frauds after the genuine day 6
        *history("M2", {3, 7, 8}),  # the latest label is genuine
        # A fraud at the same second as the latest genuine one is not later than it, whatever
        # the order: the fraud's id sorts before the genuine one's on M3, after it on M4.
        ("M3-a", tied, "x", "M3", 1.0, 1),
        ("M3-b", tied, "y", "M3", 1.0, 0),
        ("M3-c", 6 * DAY, "z", "M3", 1.0, 1),
        ("M4-a", tied, "x", "M4", 1.0, 0),
        ("M4-b", tied, "y", "M4", 1.0, 1),
        ("M4-c", 6 * DAY, "z", "M4", 1.0, 1),
        # Queried on day 45: the window is [8, 38), so the genuine day 5 is out of it.
        *history("M5", set(range(10)) - {5}),
    ]
    queries = {"M1": 20, "M2": 20, "M3": 20, "M4": 20, "M5": 45, "M6": 20}
    rows += [(f"Q{t}", d * DAY, "q", t, 1.0, 0) for t, d in queries.items()]
    # id -> (streak, seconds since its first fraud)
    expected = {
        "QM1": (3, 13 * DAY - 100),
        "QM2": (0, 0),
        "QM3": (1, 14 * DAY),
        "QM4": (1, 14 * DAY),
        "QM5": (2, 37 * DAY - 100),
        "QM6": (0, 0),
    }
    df = _tx(rows)
    shuffled = df.sample(frac=1.0, random_state=2)
    for feats in [*_both(df, DELAY), compute_features(shuffled, DELAY).loc[df.index]]:
        pairs = zip(feats[c.TERMINAL_FRAUD_STREAK], feats[c.TERMINAL_STREAK_AGE], strict=True)
        got = dict(zip(df[c.TRANSACTION_ID], pairs, strict=True))
        assert {tid: got[tid] for tid in expected} == expected


def test_isolated_frauds_by_hand():
    assert c.TERMINAL_WINDOWS[c.CARD_LINK_WINDOW] == 30 * DAY
    assert c.ISOLATED_FRAUD_WINDOWS == ("7d", "30d")
    at = 100 + 60 * DAY  # day 0; every day below is relative to it
    frauds = [
        # M1's known frauds, and the card's frauds elsewhere that link them or not.
        ("a", 30, "A", "M1"),  # linked from day 31 on, by A's fraud on M9 then
        ("a-elsewhere", 31, "A", "M9"),
        ("b1", 28, "B", "M1"),  # B's frauds are all on M1: both stay isolated
        ("b2", 29, "B", "M1"),
        ("d", 27, "D", "M1"),  # D's other fraud is not known on day 33
        ("d-elsewhere", 34, "D", "M9"),
        ("e", 10, "E", "M1"),  # E's other fraud is 35 days before: outside the link window
        ("e-elsewhere", -25, "E", "M9"),
        ("g", 12, "G", "M1"),  # G's other fraud is exactly 30 days before: inside it
        ("g-elsewhere", -18, "G", "M9"),
    ]
    rows = [(tid, at + day * DAY, card, term, 1.0, 1) for tid, day, card, term in frauds]
    rows += [(f"genuine{d}", at + d * DAY + 7, f"g{d}", "M1", 1.0, 0) for d in range(0, 33, 4)]
    # With the 7-day delay, a query on day q sees the labels before day q - 7.
    queries = {"Q40": ("M1", 40), "Q38": ("M1", 38), "Q9": ("M9", 40)}
    rows += [(tid, at + day * DAY, "q", term, 1.0, 0) for tid, (term, day) in queries.items()]
    expected = {
        "Q40": (3.0, 4.0),  # b1, b2, d; and e: a and g are linked
        "Q38": (4.0, 5.0),  # A's fraud on day 31 is not known yet: a is isolated too
        "Q9": (0.0, 0.0),  # M9's only fraud in the window, A's, is linked by A's on M1
    }
    df = _tx(rows)
    names = [c.terminal_isolated_frauds(w) for w in c.ISOLATED_FRAUD_WINDOWS]
    shuffled = df.sample(frac=1.0, random_state=4)
    for feats in [*_both(df, DELAY), compute_features(shuffled, DELAY).loc[df.index]]:
        pairs = zip(*(feats[n] for n in names), strict=True)
        got = dict(zip(df[c.TRANSACTION_ID], pairs, strict=True))
        assert {tid: got[tid] for tid in expected} == expected


def test_empty_and_unlabelled_input():
    empty = _tx([])
    assert list(compute_features(empty, DELAY).columns) == list(c.STATEFUL_FEATURES)
    with pytest.raises(ValueError, match=c.LABEL):
        compute_features(empty.drop(columns=[c.LABEL]), DELAY)
