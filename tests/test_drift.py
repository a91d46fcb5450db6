"""DriftMonitor on seeded synthetic streams with exactly known detection points.

The reference is built the way the pipeline builds it (``pusher.training_profile`` over a
training frame and evaluation scores); streams are drawn from the same generator, and drift is
injected at a known transaction index, so every assertion is about an exact window.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib
import re
from collections import OrderedDict, deque
from dataclasses import replace

import numpy as np
import orjson
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry
from scipy.spatial.distance import jensenshannon

from components.push.pusher import training_profile
from core import contract as c
from core.metadata import ModelMetadata, Thresholds
from core.statefile import StateFileError
from monitoring import drift as d

MONITORED = tuple(n for n in c.MODEL_INPUTS if n != c.TIMESTAMP)
W = 2_000  # window size of most tests: small keeps them fast, still far from the thresholds
T0 = 1_735_689_600  # 2025-01-01T00:00:00Z
SECONDS_PER_TX = 7
# The two inputs shifted by the feature-drift tests (both continuous in the generator below).
SHIFTED = (c.AMOUNT, c.CUSTOMER_SECS_SINCE_PREV)


def draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Independent columns of three shapes: continuous, small counts (tied quantile edges), and
    zero-inflated ratios, so the profiles have both even and uneven bins."""
    cols = {}
    for i, name in enumerate(MONITORED):
        kind = i % 3
        if kind == 0:
            cols[name] = rng.lognormal(3 + 0.1 * i, 0.8, n)
        elif kind == 1:
            cols[name] = rng.poisson(1 + i / 3, n).astype(float)
        else:
            cols[name] = np.where(rng.random(n) < 0.7, 0.0, rng.beta(2, 5, n))
    return cols


def draw_scores(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.beta(0.5, 20, n)


def generators(seed: int) -> tuple[np.random.Generator, np.random.Generator]:
    """One generator for the feature columns, one for the scores: a stream's scores (and so its
    alert counts) stay the same however many inputs the contract has."""
    return np.random.default_rng([seed, 0]), np.random.default_rng([seed, 1])


@pytest.fixture(scope="module")
def metadata() -> ModelMetadata:
    rng, score_rng = generators(2025)
    train = pd.DataFrame(draw(rng, 60_000))
    train[c.LABEL] = (rng.random(len(train)) < 0.01).astype("int8")
    scores = draw_scores(score_rng, 40_000)
    thresholds = {
        c.REVIEW: float(np.quantile(scores, 0.99)),
        c.BLOCK: float(np.quantile(scores, 0.998)),
    }
    return ModelMetadata(
        model_name="fraud",
        version=3,
        thresholds=Thresholds(thresholds[c.REVIEW], thresholds[c.BLOCK]),
        label_delay_days=c.DEFAULT_LABEL_DELAY_DAYS,
        training_stats=training_profile(train, scores, thresholds),
    )


def stream(
    seed: int, windows: int, size: int = W
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    rng, score_rng = generators(seed)
    n = windows * size
    return draw(rng, n), draw_scores(score_rng, n), T0 + SECONDS_PER_TX * np.arange(n)


def feed(mon: d.DriftMonitor, cols, scores, times, batch: int = 777, **kw) -> list[d.DriftEvent]:
    """Uneven batches, so windows close in the middle of a batch."""
    events = []
    for lo in range(0, len(scores), batch):
        hi = lo + batch
        part = {k: v[lo:hi] for k, v in cols.items()}
        events += mon.update(part, scores[lo:hi], event_times=times[lo:hi], **kw)
    return events


def monitor(metadata: ModelMetadata, **overrides) -> d.DriftMonitor:
    cfg = d.DriftConfig(**{"window_size": W, "min_samples": 500, **overrides})
    return d.DriftMonitor(metadata, cfg, d.DriftMetrics(CollectorRegistry()))


# --- distances by hand ------------------------------------------------------------------------------


def test_psi_and_js_distance_by_hand() -> None:
    expected = np.array([0.25, 0.5, 0.25])
    assert d.psi(np.array([1, 2, 1]), expected) == pytest.approx(0.0, abs=1e-15)
    eps = 1e-4
    a = (np.array([0.0, 0.5, 0.5]) + eps) / (1 + 3 * eps)
    e = (expected + eps) / (1 + 3 * eps)
    by_hand = float(np.sum((a - e) * np.log(a / e)))
    assert d.psi(np.array([0, 2, 2]), expected, eps) == pytest.approx(by_hand, rel=1e-12)
    assert by_hand > 1.0  # an emptied quarter of the mass is a large PSI
    for counts in ([0, 2, 2], [5, 1, 0], [1, 1, 1]):
        ref = jensenshannon(np.array(counts, float), expected, base=2)
        assert d.js_distance(np.array(counts), expected) == pytest.approx(ref, rel=1e-12)
    assert d.js_distance(np.array([1, 0]), np.array([0, 1])) == pytest.approx(1.0)


# --- stationary stream ------------------------------------------------------------------------------


def test_stationary_stream_has_no_event_in_50_windows(metadata: ModelMetadata) -> None:
    mon = monitor(metadata, window_size=5_000)
    cols, scores, times = stream(seed=1, windows=50, size=5_000)
    events = feed(mon, cols, scores, times, batch=1_237)
    assert events == []
    assert mon.window_index == 50 and len(mon.reports) == 50
    assert not any(r.drifting for r in mon.reports) and not mon.sustained
    worst_psi = max(max(r.psi.values()) for r in mon.reports)
    worst_js = max(max(r.js_distance.values()) for r in mon.reports)
    # Far from the thresholds, not just under them.
    assert worst_psi < 0.2 / 10 and worst_js < 0.1 / 2
    ratios = [r.alert_ratio for r in mon.reports]
    assert min(ratios) > 0.5 and max(ratios) < 2.0
    registry = mon.metrics.registry
    assert registry.get_sample_value("fraud_drift_windows_total") == 50
    assert registry.get_sample_value("fraud_drift_sustained") == 0


def test_window_values_equal_a_direct_histogram(metadata: ModelMetadata) -> None:
    mon = monitor(metadata)
    cols, scores, times = stream(seed=2, windows=1)
    feed(mon, cols, scores, times)
    report = mon.last_report
    assert report is not None and report.transactions == W
    stats = metadata.training_stats
    for name in (*MONITORED, d.SCORE_FEATURE):
        profile = stats[d.SCORE_FEATURE] if name == d.SCORE_FEATURE else stats["features"][name]
        values = scores if name == d.SCORE_FEATURE else cols[name]
        # np.histogram's bins are [e_i, e_i+1) like the training profile's (the last one is
        # closed, which only matters at 1e300).
        counts, _ = np.histogram(values, bins=np.array(profile["edges"]))
        expected = np.array(profile["proportions"])
        assert report.psi[name] == pytest.approx(d.psi(counts, expected), rel=1e-12), name
        assert report.js_distance[name] == pytest.approx(
            jensenshannon(counts.astype(float), expected, base=2), rel=1e-9
        ), name
    alerts = int((scores >= metadata.thresholds.review).sum())
    assert report.alert_rate == alerts / W
    assert report.alert_ratio == pytest.approx(alerts / W / mon.expected_alert_rate)
    assert (report.window_start, report.window_end) == (times[0], times[-1])


# --- injected drift ---------------------------------------------------------------------------------


def test_feature_shift_is_detected_at_its_window_with_its_features(metadata: ModelMetadata) -> None:
    k = 20
    mon = monitor(metadata)
    cols, scores, times = stream(seed=3, windows=30)
    for name in SHIFTED:
        cols[name][k * W :] *= 2.0
    events = feed(mon, cols, scores, times)
    assert {e.window for e in events} == set(range(k, 30))
    first = events[0]
    assert first.window == k and first.kind == d.FEATURE_DRIFT
    assert first.features == SHIFTED  # in contract order, nothing else
    assert set(first.values) == set(SHIFTED)
    for name in SHIFTED:
        assert first.values[name]["psi"] > 0.2 and first.values[name]["js_distance"] > 0.1
    assert first.window_start == times[k * W] and first.window_end == times[(k + 1) * W - 1]
    assert first.transactions == W and first.consecutive_windows == 1 and not first.sustained
    assert (first.model_name, first.model_version) == ("fraud", 3)
    assert all(e.kind == d.FEATURE_DRIFT and e.features == SHIFTED for e in events)

    message = first.to_message()
    decoded = json.loads(json.dumps(message, allow_nan=False))
    assert decoded["window"] == k and decoded["features"] == list(SHIFTED)
    assert decoded["window_start"] == pd.Timestamp(times[k * W], unit="s").strftime(
        c.TIMESTAMP_FORMAT
    )
    assert decoded["thresholds"] == {"psi": 0.2, "js_distance": 0.1}
    registry = mon.metrics.registry
    assert registry.get_sample_value("fraud_drift_events_total", {"kind": d.FEATURE_DRIFT}) == len(
        events
    )
    assert registry.get_sample_value("fraud_drift_psi", {"feature": c.AMOUNT}) > 0.2


def test_sustained_after_exactly_n_windows_and_reset_by_a_clean_one(
    metadata: ModelMetadata,
) -> None:
    n, k, end = 3, 10, 20
    mon = monitor(metadata, sustained_windows=n)
    cols, scores, times = stream(seed=4, windows=24)
    cols[SHIFTED[0]][k * W : end * W] *= 2.0
    sustained, due, consecutive = [], [], []
    for w in range(24):
        part = slice(w * W, (w + 1) * W)
        mon.update({k_: v[part] for k_, v in cols.items()}, scores[part], event_times=times[part])
        sustained.append(mon.sustained)
        due.append(mon.retrain_due)
        consecutive.append(mon.consecutive)
    assert [w for w, s in enumerate(sustained) if s] == list(range(k + n - 1, end))
    assert [w for w, x in enumerate(due) if x] == [12, 15, 18]
    assert consecutive[k - 1] == 0 and consecutive[end - 1] == end - k and consecutive[end] == 0
    assert mon.metrics.registry.get_sample_value("fraud_drift_sustained") == 0
    # One call that closes windows 0..13 still reports the due point it passed (window 12).
    at_once = monitor(metadata, sustained_windows=n)
    upto = 14 * W
    at_once.update(
        {k_: v[:upto] for k_, v in cols.items()}, scores[:upto], event_times=times[:upto]
    )
    assert at_once.retrain_due and at_once.consecutive == 4


def test_log_says_when_drift_starts_changes_and_ends_not_every_window(
    metadata: ModelMetadata, caplog
) -> None:
    k, end = 5, 12
    mon = monitor(metadata)
    cols, scores, times = stream(seed=4, windows=16)
    cols[SHIFTED[0]][k * W : end * W] *= 2.0
    cols[SHIFTED[1]][8 * W : end * W] *= 2.0
    with caplog.at_level(logging.INFO, logger=d.__name__):
        feed(mon, cols, scores, times)
    drifting = [w for w, r in enumerate(mon.reports) if r.drifting]
    assert drifting == list(range(k, end))
    said = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
    # Start (window 5), the second feature joining (window 8), the end (window 12).
    assert said == [
        (logging.WARNING, f"drift in window {k}"),
        (logging.WARNING, "drift in window 8"),
        (logging.INFO, f"drift ended in window {end}"),
    ]

    # A new model's first drifting window is logged as a start, even with the same features.
    def part(lo: int, hi: int):
        return {k_: v[lo * W : hi * W] for k_, v in cols.items()}, scores[lo * W : hi * W]

    again = monitor(metadata)
    again.update(*part(0, 10), event_times=times[: 10 * W])  # ends drifting in both features
    again.switch_model(replace(metadata, version=4))
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger=d.__name__):
        again.update(*part(8, 10), event_times=times[8 * W : 10 * W])
    said = [(r.levelno, r.getMessage().split(" (")[0]) for r in caplog.records]
    assert said == [(logging.WARNING, "drift in window 10"), (logging.DEBUG, "drift in window 11")]


def test_alert_rate_drift_both_ways(metadata: ModelMetadata) -> None:
    high_from, low_from = 8, 14
    mon = monitor(metadata)
    cols, scores, times = stream(seed=5, windows=20)
    review, block = metadata.thresholds.review, metadata.thresholds.block
    rng = np.random.default_rng(55)
    hot = np.zeros(len(scores), bool)
    hot[high_from * W : low_from * W] = rng.random((low_from - high_from) * W) < 0.02
    # 2 % more alerts: the alert rate triples, the 10-bin score profile barely moves.
    scores[hot] = review + (block - review) * rng.random(int(hot.sum()))
    scores[low_from * W :] = np.minimum(scores[low_from * W :], review * 0.999)
    events = feed(mon, cols, scores, times)
    assert {e.kind for e in events} == {d.ALERT_RATE_DRIFT}
    assert [e.window for e in events] == list(range(high_from, 20))
    first = events[0].values["alert_rate"]
    assert first["ratio"] > 2.0 and first["expected_alert_rate"] == mon.expected_alert_rate
    assert events[0].thresholds == {"ratio_bounds": [0.5, 2.0]}
    low = next(e for e in events if e.window == low_from).values["alert_rate"]
    assert low["alert_rate"] == 0.0 and low["ratio"] == 0.0
    assert all(r.psi[d.SCORE_FEATURE] < 0.2 for r in mon.reports)


def test_decisions_given_are_what_the_alert_rate_counts(metadata: ModelMetadata) -> None:
    mon = monitor(metadata)
    cols, scores, times = stream(seed=6, windows=1)
    decisions = np.full(W, c.APPROVE, dtype=object)
    decisions[: W // 10] = c.REVIEW  # 10 % alerted whatever the scores say
    decisions[: W // 100] = c.BLOCK
    (event,) = mon.update(cols, scores, decisions=list(decisions), event_times=times)
    assert event.kind == d.ALERT_RATE_DRIFT
    rates = event.values["alert_rate"]
    assert (rates["alert_rate"], rates["block_rate"]) == (0.1, 0.01)


def test_alert_check_needs_enough_expected_alerts(metadata: ModelMetadata) -> None:
    # 2,000 x ~1 % = ~20 expected alerts: under a minimum of 50 the check is not made.
    mon = monitor(metadata, min_expected_alerts=50)
    cols, scores, times = stream(seed=7, windows=1)
    below = np.minimum(scores, metadata.thresholds.review * 0.999)
    assert mon.update(cols, below, event_times=times) == []
    assert mon.last_report is not None and mon.last_report.alert_rate == 0.0


# --- input forms, flush, model switch ----------------------------------------------------------------


def test_rows_and_columns_and_timestamp_strings_give_the_same_windows(
    metadata: ModelMetadata,
) -> None:
    cols, scores, times = stream(seed=8, windows=2)
    cols[c.AMOUNT][W:] *= 3
    by_columns = monitor(metadata)
    events_cols = feed(by_columns, cols, scores, times)
    by_rows = monitor(metadata)
    iso = pd.to_datetime(times, unit="s", utc=True).strftime(c.TIMESTAMP_FORMAT).tolist()
    rows = [
        {**{k: float(v[i]) for k, v in cols.items()}, c.TIMESTAMP: iso[i]} for i in range(2 * W)
    ]
    events_rows = []
    for lo in range(0, 2 * W, 999):
        events_rows += by_rows.update(rows[lo : lo + 999], scores[lo : lo + 999])
    assert [e.to_message() | {"detected_at": None} for e in events_rows] == [
        e.to_message() | {"detected_at": None} for e in events_cols
    ]
    assert by_rows.last_report.psi == by_columns.last_report.psi


def test_flush_evaluates_a_partial_window_only_from_min_samples(metadata: ModelMetadata) -> None:
    mon = monitor(metadata, min_samples=500)
    cols, scores, times = stream(seed=9, windows=1)
    mon.update({k: v[:499] for k, v in cols.items()}, scores[:499], event_times=times[:499])
    assert mon.flush() == [] and mon.window_index == 0 and mon.window_fill == 0
    shifted = {k: v[:600] * (2 if k == c.AMOUNT else 1) for k, v in cols.items()}
    mon.update(shifted, scores[:600], event_times=times[:600])
    (event,) = mon.flush()
    assert event.window == 0 and event.transactions == 600 and event.features == (c.AMOUNT,)


def test_non_finite_values_are_skipped_and_counted(metadata: ModelMetadata) -> None:
    mon = monitor(metadata)
    # A stream whose alert count (20) is the expected one: the window must come out clean.
    cols, scores, times = stream(seed=15, windows=1)
    cols[c.AMOUNT][:5] = np.nan
    assert mon.update(cols, scores, event_times=times) == []
    assert mon.last_report.missing == {c.AMOUNT: 5}


def test_switch_model_restarts_window_and_streak(metadata: ModelMetadata) -> None:
    mon = monitor(metadata, sustained_windows=2)
    cols, scores, times = stream(seed=11, windows=3)
    cols[c.AMOUNT] *= 2
    feed(
        mon,
        {k: v[: 2 * W + 10] for k, v in cols.items()},
        scores[: 2 * W + 10],
        times[: 2 * W + 10],
    )
    assert mon.sustained and mon.window_fill == 10
    newer = replace(metadata, version=4)
    mon.switch_model(newer)
    assert (mon.model_version, mon.consecutive, mon.window_fill) == (4, 0, 0)
    assert not mon.sustained and mon.window_index == 2
    registry = mon.metrics.registry
    assert registry.get_sample_value("fraud_drift_model_version") == 4
    assert registry.get_sample_value("fraud_drift_sustained") == 0


def test_from_model_dir_reads_the_latest_version(metadata: ModelMetadata, tmp_path) -> None:
    for version in (1, 2):
        vdir = tmp_path / str(version)
        vdir.mkdir()
        (vdir / "saved_model.pb").write_bytes(b"")
        replace(metadata, version=version).write(vdir)
    mon = d.DriftMonitor.from_model_dir(tmp_path, d.DriftConfig(window_size=W, min_samples=10))
    assert mon.model_version == 2 and mon.feature_names == MONITORED


def test_bad_metadata_and_inputs_are_named(metadata: ModelMetadata) -> None:
    with pytest.raises(ValueError, match="training_stats"):
        d.DriftMonitor(replace(metadata, version=1, training_stats={}))
    stats = metadata.training_stats
    partial = {**stats, "features": {k: v for k, v in stats["features"].items() if k != c.AMOUNT}}
    with pytest.raises(ValueError, match=c.AMOUNT):
        d.DriftMonitor(replace(metadata, training_stats=partial))
    with pytest.raises(ValueError, match="window_size"):
        d.DriftConfig(window_size=100, min_samples=1_000)
    mon = monitor(metadata)
    cols, scores, _ = stream(seed=12, windows=1)
    with pytest.raises(ValueError, match=c.CUSTOMER_SECS_SINCE_PREV):
        mon.update({k: v for k, v in cols.items() if k != c.CUSTOMER_SECS_SINCE_PREV}, scores)
    with pytest.raises(ValueError, match="expected|values"):
        mon.update(cols, scores[:-1])
    with pytest.raises(ValueError, match="unknown decision"):
        mon.update(cols, scores, decisions=["maybe"] * W)


# --- live precision / recall ----------------------------------------------------------------------


def test_live_precision_and_recall_on_a_hand_made_label_sequence(metadata: ModelMetadata) -> None:
    mon = monitor(metadata)
    decisions = [c.BLOCK, c.REVIEW, c.APPROVE, c.APPROVE, c.REVIEW, c.APPROVE, c.BLOCK, c.APPROVE]
    ids = [f"tx-{i}" for i in range(len(decisions))]
    cols, scores, times = stream(seed=13, windows=1)
    part = {k: v[: len(ids)] for k, v in cols.items()}
    mon.update(part, scores[: len(ids)], decisions=decisions, transaction_ids=ids)
    assert math.isnan(mon.live_precision) and math.isnan(mon.live_recall)

    # tx-0 blocked & fraud (TP), tx-1 reviewed & legit (FP), tx-2 approved & fraud (FN).
    assert mon.add_labels([("tx-0", 1), ("tx-1", 0), ("tx-2", 1)]) == 3
    assert (mon.live_precision, mon.live_recall) == (1 / 2, 1 / 2)

    # A repeated label and an unknown transaction change nothing; tx-4 and tx-6 are TPs.
    class Label:  # the consumer's messages.Label shape
        def __init__(self, transaction_id: str, is_fraud: int) -> None:
            self.transaction_id, self.is_fraud = transaction_id, is_fraud

    assert mon.add_labels([Label("tx-0", 1), Label("nope", 1), Label("tx-4", 1)]) == 1
    assert mon.add_labels({"tx-6": 1, "tx-3": 0}) == 2
    assert (mon.live_precision, mon.live_recall) == (3 / 4, 3 / 4)
    assert mon.unmatched_labels == 2 and mon.pending_labels == 2  # tx-5, tx-7
    registry = mon.metrics.registry
    assert registry.get_sample_value("fraud_drift_live_precision") == 3 / 4
    assert registry.get_sample_value("fraud_drift_live_recall") == 3 / 4
    assert registry.get_sample_value("fraud_drift_labels_matched_total") == 6


def test_label_window_slides_and_pending_decisions_are_bounded(metadata: ModelMetadata) -> None:
    mon = monitor(metadata, label_window=2, max_pending_labels=3)
    ids = [f"tx-{i}" for i in range(5)]
    cols, scores, _ = stream(seed=14, windows=1)
    decisions = [c.REVIEW, c.REVIEW, c.APPROVE, c.REVIEW, c.APPROVE]
    mon.update({k: v[:5] for k, v in cols.items()}, scores[:5], decisions, None, ids)
    assert mon.pending_labels == 3  # tx-0 and tx-1 were evicted
    assert mon.add_labels([("tx-0", 1), ("tx-1", 1)]) == 0
    assert mon.add_labels([("tx-2", 1), ("tx-3", 1), ("tx-4", 0)]) == 3
    # Only the last two matched labels count: tx-3 (alerted fraud) and tx-4 (approved legit).
    assert (mon.live_precision, mon.live_recall) == (1.0, 1.0)


# --- event-time windows ---------------------------------------------------------------------------

HOUR = 3_600


def timed_monitor(metadata: ModelMetadata, window_h: int = 6, **overrides) -> d.DriftMonitor:
    cfg = d.DriftConfig(
        **{
            "window_seconds": window_h * HOUR,
            "hop_seconds": HOUR,
            "min_samples": 2_000,
            **overrides,
        }
    )
    return d.DriftMonitor(metadata, cfg, d.DriftMetrics(CollectorRegistry()))


def test_timed_windows_cover_the_last_span_every_hop_whatever_the_batches(
    metadata: ModelMetadata,
) -> None:
    cols, scores, times = stream(seed=11, windows=1, size=30 * HOUR // SECONDS_PER_TX)
    hop0 = T0 // HOUR
    runs = []
    for batch in (1_000_000, 777, 51):
        mon = timed_monitor(metadata)
        assert feed(mon, cols, scores, times, batch=batch) == []
        runs.append([(r.transactions, r.window_start, r.window_end, r.psi) for r in mon.reports])
    assert runs[0] == runs[1] == runs[2]
    # Windows ending with hops 0..4 reach back before the first row and are skipped; the last
    # hop is still open (no later row arrived), so hops 5..28 end a window each.
    reports = mon.reports
    assert len(reports) == 24 and [r.window for r in reports] == list(range(24))
    for r, last_hop in zip(reports, range(hop0 + 5, hop0 + 29), strict=True):
        inside = (times >= (last_hop - 5) * HOUR) & (times < (last_hop + 1) * HOUR)
        assert r.transactions == int(inside.sum())
        assert (r.window_start, r.window_end) == (times[inside][0], times[inside][-1])
    assert mon.window_fill == int((times >= (hop0 + 24) * HOUR).sum())
    # flush() evaluates the open window too.
    (last,) = [mon.flush(), mon.reports[-1]][1:]
    assert last.window_end == times[-1] and len(mon.reports) == 25


def test_timed_alert_drift_is_detected_in_the_window_that_ends_with_its_first_hour(
    metadata: ModelMetadata,
) -> None:
    onset_hour = 20
    cols, scores, times = stream(seed=12, windows=1, size=40 * HOUR // SECONDS_PER_TX)
    review, block = metadata.thresholds.review, metadata.thresholds.block
    rng = np.random.default_rng(120)
    after = times >= T0 + onset_hour * HOUR
    hot = after & (rng.random(len(scores)) < 0.2)
    scores[hot] = review + (block - review) * rng.random(int(hot.sum()))
    mon = timed_monitor(metadata, sustained_windows=3)
    events = feed(mon, cols, scores, times, batch=333)
    # Later windows, mostly new hours, move the score histogram too.
    assert {e.kind for e in events} == {d.ALERT_RATE_DRIFT, d.SCORE_DRIFT}
    first = events[0]
    assert first.kind == d.ALERT_RATE_DRIFT
    onset_hop_end = T0 + (onset_hour + 1) * HOUR
    # The first window holding the new hour drifts (a fifth of an hour's rows alerted is more
    # than twice a 6-hour window's expected alerts), and no window before it does.
    assert first.window_end == times[times < onset_hop_end][-1]
    assert not any(r.drifting for r in mon.reports if r.window < first.window)
    assert all(r.drifting for r in mon.reports if r.window >= first.window)
    windows = sorted({e.window for e in events})
    sustained = {e.window: e.sustained for e in events}
    assert [sustained[w] for w in windows[:3]] == [False, False, True]


def test_timed_windows_need_event_times_and_whole_hops(metadata: ModelMetadata) -> None:
    mon = timed_monitor(metadata)
    cols, scores, _ = stream(seed=13, windows=1)
    with pytest.raises(ValueError, match="event_times"):
        mon.update(cols, scores)
    with pytest.raises(ValueError, match="whole multiple"):
        d.DriftConfig(window_seconds=5 * HOUR, hop_seconds=2 * HOUR)
    with pytest.raises(ValueError, match="go together"):
        d.DriftConfig(window_seconds=5 * HOUR)


def _install(metadata: ModelMetadata, base, version: int) -> None:
    replace(metadata, version=version).write(base / str(version))


def _loop(base, tmp_path, warmup_s: float = 0.0):
    from monitoring.loop import DriftLoop, DriftLoopConfig

    config = DriftLoopConfig(
        model_base_path=base,
        windows_log=tmp_path / "windows.jsonl",
        warmup_s=warmup_s,
        state_path=tmp_path / "drift_state.json",
        save_interval_s=3_600,  # only the explicit saves below
    )
    drift = d.DriftConfig(window_seconds=6 * HOUR, hop_seconds=HOUR, min_samples=2_000)
    return DriftLoop(config, drift, d.DriftMetrics(CollectorRegistry()))


def _observe(loop, version: int, cols, scores, times, lo: int, hi: int, batch: int = 500) -> None:
    ids = [f"tx{i}" for i in range(len(scores))]
    for a in range(lo, hi, batch):
        b = min(a + batch, hi)
        decisions = [c.APPROVE] * (b - a)
        loop.observe(
            version,
            {k: v[a:b] for k, v in cols.items()},
            scores[a:b],
            decisions,
            times[a:b],
            ids[a:b],
        )


def test_drift_loop_resumes_windows_streak_and_warmup_after_a_restart(
    metadata: ModelMetadata, tmp_path
) -> None:
    base = tmp_path / "models"
    _install(metadata, base, 3)
    cols, scores, times = stream(seed=14, windows=1, size=40 * HOUR // SECONDS_PER_TX)
    cols[SHIFTED[0]][times >= T0 + 20 * HOUR] *= 2.0
    cut = int(np.searchsorted(times, T0 + 23 * HOUR + 1_800))  # mid-hop, mid-streak

    straight = _loop(base, tmp_path / "a", warmup_s=2 * HOUR)
    _observe(straight, 3, cols, scores, times, 0, len(scores))

    first = _loop(base, tmp_path / "b", warmup_s=2 * HOUR)
    _observe(first, 3, cols, scores, times, 0, cut)
    first.save()
    second = _loop(base, tmp_path / "b", warmup_s=2 * HOUR)  # a new process, same state dir
    _observe(second, 3, cols, scores, times, cut, len(scores))

    def seen(loop) -> list:
        return [(r.window, r.transactions, r.drifting, r.psi) for r in loop.monitor.reports]

    # The resumed monitor evaluates exactly the windows an uninterrupted one does, and the
    # streak carries over (a fresh one would also re-wait the warm-up: 2 h of event time).
    assert seen(first) + seen(second) == seen(straight)
    assert second.monitor.consecutive == straight.monitor.consecutive > 10
    assert second.monitor.window_index == straight.monitor.window_index

    # Saved against version 3; version 4 answers after the restart: windows start afresh, the
    # feature warm-up (event time since the first transaction) does not.
    _install(metadata, base, 4)
    third = _loop(base, tmp_path / "b", warmup_s=2 * HOUR)
    _observe(third, 4, cols, scores, times, len(scores) - 4_000, len(scores))
    assert third.monitor.model_version == 4 and third.monitor.window_index > 0
    assert third._first_event == float(times[0])


def test_drift_state_round_trips_exactly(metadata: ModelMetadata, tmp_path) -> None:
    base = tmp_path / "models"
    _install(metadata, base, 3)
    cols, scores, times = stream(seed=15, windows=1, size=12 * HOUR // SECONDS_PER_TX)
    cut = int(np.searchsorted(times, T0 + 8 * HOUR + 1_000))  # mid-hop
    first = _loop(base, tmp_path)
    _observe(first, 3, cols, scores, times, 0, cut)
    first.add_labels([(f"tx{i}", i % 2) for i in range(0, 600, 3)])
    first._pending = ("a retrain waiting for its labels", float(T0 + 100 * HOUR))
    first.save()
    mon = first.monitor
    saved = mon.state()
    # Everything the monitor carries is in it: windows (the unused count accumulator has
    # infinite time bounds), the streak, decisions waiting for labels and labels matched.
    # Hops 0-8 seen: the windows ending with hops 5, 6 and 7 are closed, hops 3-8 are kept.
    assert len(saved["_buckets"]) == 6 and saved["_open_hop"] == saved["_first_hop"] + 8
    assert saved["_acc"]["t_min"] == "inf" and saved["_acc"]["t_max"] == "-inf"
    assert len(saved["_pending"]) == cut - 200 and len(saved["_matched"]) == 200
    assert saved["_tp"] == 0 and saved["_frauds"] == 100 and saved["window_index"] == 3

    fresh = d.DriftMonitor(metadata, mon.config, d.DriftMetrics(CollectorRegistry()))
    assert fresh.restore_state(orjson.loads(orjson.dumps(saved)))
    assert orjson.dumps(fresh.state()) == orjson.dumps(saved)  # order and float bits included
    assert isinstance(fresh.labels.pending, OrderedDict)
    assert isinstance(fresh.labels.matched, deque)
    assert all(type(pair) is tuple for pair in fresh.labels.matched)
    assert fresh._acc.counts[SHIFTED[0]].dtype == np.int64

    second = _loop(base, tmp_path)  # a new process, same state file
    for loop in (first, second):
        _observe(loop, 3, cols, scores, times, cut, len(scores))
        loop.add_labels([(f"tx{i}", 1) for i in range(1, cut, 3)])
    assert orjson.dumps(second.monitor.state()) == orjson.dumps(first.monitor.state())
    assert second._pending == first._pending and type(second._pending) is tuple
    assert (second._first_event, second._last_window) == (first._first_event, first._last_window)


class _Touch:
    """Unpickling this creates ``path``: proof that a loader ran code from the file."""

    def __init__(self, path) -> None:
        self.path = path

    def __reduce__(self) -> tuple:
        return pathlib.Path.touch, (self.path,)


def test_drift_state_of_another_format_version_or_release_is_refused_unread(
    metadata: ModelMetadata, tmp_path
) -> None:
    import pickle

    path = tmp_path / "drift_state.json"
    marker = tmp_path / "marker"
    pickle.loads(pickle.dumps(_Touch(marker)))
    assert marker.exists()  # the payload works: the check below can fail
    marker.unlink()
    path.write_bytes(pickle.dumps(_Touch(marker), protocol=pickle.HIGHEST_PROTOCOL))
    with pytest.raises(
        StateFileError,
        match=re.escape(
            f"{path}: a pickle (written by an older release), not a fraud-drift-state document; "
            "it is not read, since unpickling can run code: move it away to start the monitor "
            "afresh"
        ),
    ):
        _loop(tmp_path / "models", tmp_path)
    assert not marker.exists()

    refused = {
        "fraud-drift-state version 2, this release reads version 3 only": {
            "format": "fraud-drift-state",
            "version": 2,
        },
        "format 'fraud-partition-snapshot', expected 'fraud-drift-state'": {
            "format": "fraud-partition-snapshot",
            "version": 3,
        },
        "fraud-drift-state document without monitor, _streak_start": {
            "format": "fraud-drift-state",
            "version": 3,
            "_first_event": None,
            "_last_window": -1,
            "_pending": None,
            "triggers": [],
        },
    }
    for message, document in refused.items():
        path.write_bytes(orjson.dumps(document))
        with pytest.raises(StateFileError, match=f"^{re.escape(str(path))}: .*{message}"):
            _loop(tmp_path / "models", tmp_path)


# --- night excess ---------------------------------------------------------------------------------

DAY = 24 * HOUR
NIGHT_DAYS = 8


@pytest.fixture(scope="module")
def night_metadata(metadata: ModelMetadata) -> ModelMetadata:
    """The same reference, built from a training frame with event times (whole days), so it
    has the night profile."""
    rng = np.random.default_rng(2026)
    n = NIGHT_DAYS * DAY // SECONDS_PER_TX
    train = pd.DataFrame(draw(rng, n))
    train[c.LABEL] = 0
    train[c.TIMESTAMP] = pd.to_datetime(T0 + SECONDS_PER_TX * np.arange(n), unit="s", utc=True)
    scores = draw_scores(rng, 40_000)
    stats = training_profile(train, scores, metadata.thresholds.to_dict())
    assert set(stats["night"]) == set(MONITORED)
    return replace(metadata, training_stats=stats)


def day_monitor(metadata: ModelMetadata, **overrides) -> d.DriftMonitor:
    return timed_monitor(metadata, window_h=24, **overrides)


def night_z_by_hand(metadata: ModelMetadata, name: str, values, times) -> float:
    """The check, recomputed from the raw rows of one window."""
    ref = metadata.training_stats
    inner = np.asarray(ref["features"][name]["edges"][1:-1])
    k = len(inner) + 1
    cells = np.where(c.is_night(times), k, 0) + np.searchsorted(inner, values, side="right")
    obs = np.bincount(cells, minlength=2 * k)
    exp = len(values) * np.asarray(ref["night"][name]["proportions"])
    used = exp >= d.DriftConfig().night_min_expected
    return float(((obs - exp)[used] / np.sqrt(ref["night"][name]["dispersion"] * exp[used])).max())


def test_night_profile_dispersion_is_poisson_for_iid_days_and_more_when_nights_vary() -> None:
    from components.push.pusher import feature_profile, night_profile

    rng = np.random.default_rng(7)
    n = 30 * 2_000
    t = np.sort(rng.integers(0, 30 * DAY, n))
    values = rng.lognormal(0, 1, n)
    prof = feature_profile(values)
    iid = night_profile(values, c.is_night(t), t // DAY, prof)
    assert len(iid["proportions"]) == 2 * len(prof["proportions"])
    assert sum(iid["proportions"]) == pytest.approx(1.0)
    assert iid["days"] == 30 and 1.0 <= iid["dispersion"] < 1.3
    # Every other day has 45 % more night traffic: the night cells vary beyond Poisson.
    extra = rng.integers(0, 6 * HOUR, 15 * 300) + DAY * (2 * rng.integers(0, 15, 15 * 300))
    t2 = np.concatenate([t, extra])
    v2 = np.concatenate([values, rng.lognormal(0, 1, len(extra))])
    varied = night_profile(v2, c.is_night(t2), t2 // DAY, feature_profile(v2))
    assert varied["dispersion"] > 1.5


def test_stationary_days_have_no_night_excess(night_metadata: ModelMetadata) -> None:
    cols, scores, times = stream(seed=21, windows=1, size=4 * DAY // SECONDS_PER_TX)
    mon = day_monitor(night_metadata)
    assert feed(mon, cols, scores, times, batch=1_111) == []
    reports = list(mon.reports)
    assert len(reports) == 3 * 24 and not any(r.drifting for r in reports)
    top = max(max(r.night_excess_z.values()) for r in reports)
    assert 1.0 < top < d.DriftConfig().night_z_threshold / 2
    last = reports[-1]
    inside = (times >= times[-1] // HOUR * HOUR - DAY) & (times < times[-1] // HOUR * HOUR)
    assert last.transactions == int(inside.sum())
    for name in (c.AMOUNT, MONITORED[1], MONITORED[2]):
        by_hand = night_z_by_hand(night_metadata, name, cols[name][inside], times[inside])
        assert last.night_excess_z[name] == pytest.approx(by_hand, rel=1e-12)
    # Windows that are not whole days hold part of the daily cycle: the check stands aside.
    for other in (monitor(night_metadata, window_size=5_000), timed_monitor(night_metadata)):
        feed(other, cols, scores, times, batch=5_000)
        assert other.reports and all(r.night_excess_z == {} for r in other.reports)


def test_a_few_night_rows_in_one_bin_drift_where_psi_does_not(
    night_metadata: ModelMetadata,
) -> None:
    per_hour, onset_day = 60, 2
    cols, scores, times = stream(seed=22, windows=1, size=3 * DAY // SECONDS_PER_TX)
    # The injected rows: exactly per_hour an hour, their amounts and the rest from generators of
    # their own, so the counts below do not move with the number of inputs the contract has.
    rng, score_rng = generators(220)
    top_amount = night_metadata.training_stats["features"][c.AMOUNT]["edges"][-2] * 2
    extra_cols = draw(rng, 5 * per_hour)
    extra_cols[c.AMOUNT] = top_amount * (1 + score_rng.random(5 * per_hour))
    start = T0 + onset_day * DAY
    extra_times = start + np.arange(5 * per_hour) * (HOUR // per_hour)
    order = np.argsort(np.concatenate([times, extra_times]), kind="stable")
    cols = {k: np.concatenate([cols[k], extra_cols[k]])[order] for k in cols}
    scores = np.concatenate([scores, draw_scores(score_rng, 5 * per_hour)])[order]
    times = np.concatenate([times, extra_times])[order]

    mon = day_monitor(night_metadata)
    events = feed(mon, cols, scores, times, batch=500)
    first = events[0]
    assert first.kind == d.NIGHT_EXCESS and first.features == (c.AMOUNT,)
    # 60 rows an hour in the amount's top bin at night against ~410 expected there: the window
    # ending with the third hour (+180) crosses 8 sd, the one ending with the second (+120) not.
    assert first.window_end == times[times < start + 3 * HOUR][-1]
    value = first.values[c.AMOUNT]
    bins = len(night_metadata.training_stats["features"][c.AMOUNT]["proportions"])
    assert (value["night"], value["bin"]) == (True, bins - 1)
    # Observed: the window's night rows in the top bin, the 3 * per_hour injected ones among them.
    end_hop = (first.window_end // HOUR + 1) * HOUR
    inside = (times >= end_hop - DAY) & (times < end_hop)
    edges = night_metadata.training_stats["features"][c.AMOUNT]["edges"]
    top = np.searchsorted(edges[1:-1], cols[c.AMOUNT], side="right") == bins - 1
    assert value["observed"] == np.sum(inside & top & c.is_night(times))
    assert np.sum((extra_times >= end_hop - DAY) & (extra_times < end_hop)) == 3 * per_hour
    message = json.loads(json.dumps(first.to_message()))
    assert message["kind"] == "night_excess" and message["thresholds"] == {"z": 8.0}
    assert message["values"][c.AMOUNT] == pytest.approx(value)
    for r in mon.reports:
        end_hop = (r.window_end // HOUR + 1) * HOUR
        inside = (times >= end_hop - DAY) & (times < end_hop)
        by_hand = night_z_by_hand(night_metadata, c.AMOUNT, cols[c.AMOUNT][inside], times[inside])
        assert r.night_excess_z[c.AMOUNT] == pytest.approx(by_hand, rel=1e-12)
        assert (by_hand > 8) == (c.AMOUNT in {f for e in r.events for f in e.features})
    # The same rows are far below what PSI or JS would call drift, in every window.
    assert {e.kind for e in events} == {d.NIGHT_EXCESS}
    assert max(r.psi[c.AMOUNT] for r in mon.reports) < d.DriftConfig().psi_threshold / 10
    # Off, the check neither measures nor drifts.
    off = day_monitor(night_metadata, night_z_threshold=None)
    assert feed(off, cols, scores, times, batch=500) == []
    assert all(r.night_excess_z == {} for r in off.reports)


def _replica_loop(base, directory, owner: str, orphaned_after_s: float = 600.0, trigger=None):
    """A consumer replica's drift loop with its own state file (``--drift-state-dir``)."""
    from monitoring.drift_replicas import drift_files
    from monitoring.loop import DriftLoop, DriftLoopConfig

    state, windows = drift_files(directory, directory / "drift", owner, orphaned_after_s)
    config = DriftLoopConfig(
        model_base_path=base,
        windows_log=windows,
        warmup_s=0.0,
        label_wait_s=2 * HOUR,
        state_path=state,
        save_interval_s=3_600,
    )
    drift = d.DriftConfig(window_seconds=6 * HOUR, hop_seconds=HOUR, min_samples=2_000)
    return DriftLoop(config, drift, d.DriftMetrics(CollectorRegistry()), trigger)


def test_replicas_keep_their_own_drift_state_and_a_new_pod_adopts_a_gone_ones(
    metadata: ModelMetadata, tmp_path
) -> None:
    import os

    base = tmp_path / "models"
    _install(metadata, base, 3)
    cols, scores, times = stream(seed=16, windows=1, size=20 * HOUR // SECONDS_PER_TX)
    half = len(scores) // 2
    a, b = _replica_loop(base, tmp_path, "consumer-a"), _replica_loop(base, tmp_path, "consumer-b")
    _observe(a, 3, cols, scores, times, 0, half)
    _observe(b, 3, cols, scores, times, 0, half // 2)
    a.save()
    b.save()
    assert a.config.state_path != b.config.state_path
    assert a.config.windows_log != b.config.windows_log

    # consumer-a's container restarts: same pod name, its own windows.
    assert _replica_loop(base, tmp_path, "consumer-a").config.state_path == a.config.state_path
    # consumer-a's pod is replaced by consumer-c: once a's file is orphaned, c takes it over;
    # b's, written recently, stays b's.
    old = times[0] - 3_600
    os.utime(a.config.state_path, (old, old))
    c_loop = _replica_loop(base, tmp_path, "consumer-c")
    assert not a.config.state_path.exists() and c_loop.config.state_path.exists()
    _observe(c_loop, 3, cols, scores, times, half, len(scores))
    straight = _replica_loop(base, tmp_path / "straight", "consumer-x")
    _observe(straight, 3, cols, scores, times, 0, len(scores))
    assert c_loop.monitor.window_index == straight.monitor.window_index
    assert [r.window for r in a.monitor.reports + c_loop.monitor.reports] == [
        r.window for r in straight.monitor.reports
    ]
    assert b.config.state_path.exists()
    assert _replica_loop(base, tmp_path, "consumer-b").config.state_path == b.config.state_path


def test_two_new_pods_racing_for_one_orphan_get_it_once(tmp_path) -> None:
    import os
    import threading

    from monitoring.drift_replicas import replica_state_path

    for round_ in range(30):
        directory = tmp_path / str(round_)
        directory.mkdir()
        orphan = directory / "gone.json"
        orphan.write_text("the gone pod's state")
        os.utime(orphan, (0, 0))
        gate = threading.Barrier(2)
        got: dict[str, pathlib.Path] = {}

        def start(owner: str, directory=directory, gate=gate, got=got) -> None:
            gate.wait()
            got[owner] = replica_state_path(directory, owner, orphaned_after_s=60)

        threads = [threading.Thread(target=start, args=(o,)) for o in ("new-1", "new-2")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=10)
        adopted = [p for p in got.values() if p.exists()]
        assert len(adopted) == 1 and adopted[0].read_text() == "the gone pod's state"
        assert not orphan.exists()
    with pytest.raises(ValueError, match="pod name"):
        replica_state_path(tmp_path, "../escape", orphaned_after_s=60)


def test_a_drift_retrain_ends_its_windows_where_it_was_due(
    metadata: ModelMetadata, tmp_path
) -> None:
    """The trigger gets the event time the retrain was due at (drift onset + label wait) as
    as_of, not whatever time the batch that fired it reached."""
    from monitoring.loop import DRIFT_REASON
    from monitoring.retrain import CLUSTER, SUBMITTED, RetrainConfig, RetrainTrigger

    base = tmp_path / "models"
    _install(metadata, base, 3)
    cols, scores, times = stream(seed=14, windows=1, size=40 * HOUR // SECONDS_PER_TX)
    cols[SHIFTED[0]][times >= T0 + 20 * HOUR] *= 2.0
    jobs: list = []

    def runner(job):
        jobs.append(job)
        return {"pushed": None, "kfp_run_id": "run-1"}

    trigger = RetrainTrigger(
        RetrainConfig(
            run_dir=tmp_path / "retrain",
            mode=CLUSTER,
            host="http://ml-pipeline.kubeflow:8888",
            cluster_data_path="/data/retrain.parquet",
        ),
        runner,
    )
    loop = _replica_loop(base, tmp_path, "consumer-a", trigger=trigger)
    _observe(loop, 3, cols, scores, times, 0, len(scores))
    assert trigger.wait(timeout=30).status == SUBMITTED
    (fired,) = loop.triggers
    assert fired["reason"].startswith(DRIFT_REASON)
    onset = re.search(r"since event time (\S+)", fired["reason"]).group(1)
    due = pd.Timestamp(onset) + pd.Timedelta(seconds=loop.config.label_wait_s)
    (job,) = jobs
    assert pd.Timestamp(job.params["as_of"]) == due <= pd.Timestamp(fired["event_time"])
    assert trigger.history()[0]["as_of"] == job.params["as_of"]
