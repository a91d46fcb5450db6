"""monitoring.quality on seeded decisions and labels: exact counts, amounts, average precision,
censoring of blocked transactions without a confirmed outcome, bounded series per version."""

from __future__ import annotations

import math

import pytest

from core import contract as c
from monitoring import metrics as mm
from monitoring.metrics import QualityMetrics
from monitoring.quality import (
    DECISIONS,
    SEGMENT_INPUTS,
    SEGMENTS,
    TRUTHS,
    QualityMonitor,
    average_precision,
)
from streaming.messages import label_message, parse_label

DAY0 = 1_735_689_600  # 2025-01-01T00:00:00Z
HOUR = 3600
COUNT, RATIO = SEGMENT_INPUTS
# id, amount, hour of day 0, customer count, terminal fraud ratio, score, decision
BATCH = [
    ("a", 10.0, 12, 1.0, 0.0, 0.10, c.APPROVE),
    ("b", 50.0, 23, 3.0, 0.2, 0.60, c.REVIEW),
    ("c", 200.0, 2, 5.0, 0.0, 0.95, c.BLOCK),
    ("d", 300.0, 14, 2.0, 0.1, 0.90, c.BLOCK),
    ("e", 80.0, 10, 1.0, 0.0, 0.20, c.APPROVE),
    ("f", 30.0, 11, 4.0, 0.0, 0.50, c.REVIEW),
]
# d (blocked) never gets a confirmed outcome; "zzz" was never decided here.
LABELS = {"a": 0, "b": 1, "c": 1, "e": 1, "f": 0, "zzz": 1}


def observe(monitor: QualityMonitor, version: str, rows: list[tuple], day: int = 0) -> None:
    ids, amounts, hours, counts, ratios, scores, decisions = zip(*rows, strict=True)
    monitor.observe(
        version,
        {c.AMOUNT: list(amounts), COUNT: list(counts), RATIO: list(ratios)},
        list(scores),
        list(decisions),
        [DAY0 + day * c.SECONDS_PER_DAY + h * HOUR for h in hours],
        list(ids),
    )


def sample(monitor: QualityMonitor, name: str, **labels: str) -> float | None:
    return monitor.metrics.registry.get_sample_value(name, labels)


def labelled(
    monitor: QualityMonitor,
    version: str,
    segment: str,
    band: str,
    decision: str,
    fraud: str,
    amount: bool = False,
) -> float | None:
    name = (mm.LABELLED_AMOUNT if amount else mm.LABELLED) + "_total"
    keys = dict(model_version=version, segment=segment, band=band, decision=decision, fraud=fraud)
    return sample(monitor, name, **keys)


def series_of(monitor: QualityMonitor, version: str) -> int:
    return sum(
        1
        for metric in monitor.metrics.registry.collect()
        if metric.name == mm.LABELLED
        for s in metric.samples
        if s.name == mm.LABELLED + "_total" and s.labels["model_version"] == version
    )


@pytest.fixture
def monitor() -> QualityMonitor:
    m = QualityMonitor(QualityMetrics(), censor_after_s=c.SECONDS_PER_DAY)
    observe(m, "1", BATCH)
    return m


def test_labels_count_each_decision_by_truth_in_every_segment(monitor: QualityMonitor) -> None:
    assert monitor.add_labels(LABELS) == 5
    assert monitor.unmatched == 1
    expected_all = {
        (c.APPROVE, "0"): (1, 10.0),
        (c.APPROVE, "1"): (1, 80.0),  # missed fraud
        (c.REVIEW, "0"): (1, 30.0),
        (c.REVIEW, "1"): (1, 50.0),  # fraud sent to review
        (c.BLOCK, "0"): (0, 0.0),
        (c.BLOCK, "1"): (1, 200.0),  # fraud blocked, confirmed
    }
    for (decision, fraud), (n, amount) in expected_all.items():
        assert labelled(monitor, "1", "all", "all", decision, fraud) == n
        assert labelled(monitor, "1", "all", "all", decision, fraud, amount=True) == amount
    # Bands: a 10/day/new/clean, b 50/night/known/flagged, c 200/night/known/clean,
    # e 80/day/new/clean, f 30/day/known/clean.
    assert labelled(monitor, "1", "amount_band", "under_25", c.APPROVE, "0") == 1
    assert labelled(monitor, "1", "amount_band", "25_to_100", c.APPROVE, "1") == 1
    assert labelled(monitor, "1", "amount_band", "25_to_100", c.REVIEW, "0") == 1
    assert labelled(monitor, "1", "amount_band", "100_plus", c.BLOCK, "1") == 1
    assert labelled(monitor, "1", "time_of_day", "night", c.REVIEW, "1") == 1
    assert labelled(monitor, "1", "time_of_day", "night", c.BLOCK, "1") == 1
    assert labelled(monitor, "1", "time_of_day", "day", c.APPROVE, "1") == 1
    assert labelled(monitor, "1", "customer", "new", c.APPROVE, "1") == 1
    assert labelled(monitor, "1", "customer", "new", c.APPROVE, "0") == 1
    assert labelled(monitor, "1", "customer", "known", c.BLOCK, "1") == 1
    assert labelled(monitor, "1", "terminal_risk", "flagged", c.REVIEW, "1") == 1
    assert labelled(monitor, "1", "terminal_risk", "clean", c.REVIEW, "0") == 1
    # Every segment partitions the same five labelled decisions.
    for segment, bands in SEGMENTS.items():
        total = sum(
            labelled(monitor, "1", segment, band, d, t)
            for band in bands
            for d in DECISIONS
            for t in TRUTHS
        )
        assert total == 5, segment
    # Ranked c .95 (F), b .6 (F), f .5, e .2 (F), a .1: precision at each fraud 1, 1, 3/4.
    assert sample(monitor, mm.AVERAGE_PRECISION, model_version="1") == pytest.approx(2.75 / 3)
    assert sample(monitor, mm.WINDOW_LABELS, model_version="1") == 5


def test_a_block_without_confirmed_outcome_is_censored_not_counted(
    monitor: QualityMonitor,
) -> None:
    monitor.add_labels(LABELS)
    unlabelled = mm.UNLABELLED + "_total"
    assert sample(monitor, unlabelled, model_version="1", decision=c.BLOCK) == 0
    # Two days later the label of d (blocked at day 0, 14:00) is overdue.
    observe(monitor, "1", [("g", 20.0, 9, 2.0, 0.0, 0.1, c.APPROVE)], day=2)
    assert sample(monitor, unlabelled, model_version="1", decision=c.BLOCK) == 1
    assert sample(monitor, unlabelled, model_version="1", decision=c.APPROVE) == 0
    assert list(monitor.pending) == ["g"]
    # A confirmation after censoring changes no metric: it is unmatched.
    assert monitor.add_labels({"d": 1}) == 0
    assert monitor.unmatched == 2
    assert labelled(monitor, "1", "all", "all", c.BLOCK, "1") == 1
    assert labelled(monitor, "1", "all", "all", c.BLOCK, "0") == 0


def test_a_confirmed_block_counts_from_its_outcome(monitor: QualityMonitor) -> None:
    confirmed = parse_label(
        label_message(
            {
                c.TRANSACTION_ID: "d",
                c.TERMINAL_ID: "t1",
                c.CUSTOMER_ID: "c1",
                c.TIMESTAMP: "2025-01-01T14:00:00Z",
                c.LABEL: 0,
                c.LABEL_AVAILABLE_AT: "2025-01-02T09:00:00Z",
            }
        )
    )
    assert monitor.add_labels([confirmed]) == 1
    assert labelled(monitor, "1", "all", "all", c.BLOCK, "0") == 1
    assert labelled(monitor, "1", "all", "all", c.BLOCK, "0", amount=True) == 300.0
    assert labelled(monitor, "1", "terminal_risk", "flagged", c.BLOCK, "0") == 1
    # A label already judged is not counted twice.
    assert monitor.add_labels([confirmed]) == 0
    assert labelled(monitor, "1", "all", "all", c.BLOCK, "0") == 1


def test_series_stay_bounded_per_version_and_old_versions_go() -> None:
    monitor = QualityMonitor(QualityMetrics(), max_versions=2)
    per_version = sum(len(b) for b in SEGMENTS.values()) * len(DECISIONS) * len(TRUTHS)
    assert per_version == 60
    for version in ("1", "2", "3"):
        observe(monitor, version, BATCH)
    assert monitor.versions == ["2", "3"]
    assert [series_of(monitor, v) for v in ("1", "2", "3")] == [0, 60, 60]
    assert sample(monitor, mm.AVERAGE_PRECISION, model_version="1") is None
    assert sample(monitor, mm.UNLABELLED + "_total", model_version="1", decision=c.BLOCK) is None
    # The transactions' latest decisions are version 3's; their labels count there only.
    assert monitor.add_labels(LABELS) == 5
    assert labelled(monitor, "3", "all", "all", c.BLOCK, "1") == 1
    assert labelled(monitor, "2", "all", "all", c.BLOCK, "1") == 0


def test_the_oldest_pending_decisions_go_beyond_max_pending() -> None:
    monitor = QualityMonitor(QualityMetrics(), max_pending=4)
    observe(monitor, "1", BATCH)
    assert list(monitor.pending) == ["c", "d", "e", "f"]
    unlabelled = mm.UNLABELLED + "_total"
    assert sample(monitor, unlabelled, model_version="1", decision=c.APPROVE) == 1
    assert sample(monitor, unlabelled, model_version="1", decision=c.REVIEW) == 1
    assert sample(monitor, unlabelled, model_version="1", decision=c.BLOCK) == 0


def test_a_batch_without_the_segment_inputs_is_refused_by_name() -> None:
    monitor = QualityMonitor(QualityMetrics())
    with pytest.raises(ValueError, match=RATIO):
        monitor.observe("1", {c.AMOUNT: [1.0], COUNT: [1.0]}, [0.1], [c.APPROVE], [DAY0], ["x"])


def test_average_precision_matches_the_pr_curve_definition() -> None:
    assert average_precision([0.9, 0.8, 0.3, 0.1], [True, False, True, False]) == pytest.approx(
        (1 + 2 / 3) / 2
    )
    # Tied scores are one threshold: both at 0.5 share precision 1/2.
    assert average_precision([0.5, 0.5], [True, False]) == pytest.approx(0.5)
    assert math.isnan(average_precision([0.3, 0.2], [False, False]))
