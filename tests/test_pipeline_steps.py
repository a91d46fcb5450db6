"""Unit tests of the pipeline's plain steps on tiny data (no KFP, no Beam)."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from components.evaluate.evaluator import (
    GateConfig,
    bless,
    card_precision_at_k,
    choose_family,
    comparison_table,
    confusion,
    recall_at_fpr,
    thresholds_from_budget,
)
from components.ingest.ingest import split
from components.push.pusher import feature_profile, push
from core import contract as c
from core.metadata import METADATA_FILE, ModelMetadata, Thresholds
from core.model import model_versions
from core.windows import resolve_windows

_METADATA = ModelMetadata(model_name="m", thresholds=Thresholds(0.5, 0.9), label_delay_days=7)


def _day(s: str) -> pd.Timestamp:
    return pd.Timestamp(s, tz="UTC")


def test_explicit_windows_carve_evaluation_from_the_end():
    w = resolve_windows(train_start="2025-01-01", train_end="2025-01-11")
    assert (w.train_start, w.train_end) == (_day("2025-01-01"), _day("2025-01-09"))
    assert (w.eval_start, w.eval_end) == (_day("2025-01-09"), _day("2025-01-11"))
    w = resolve_windows(train_start="2025-01-01", train_end="2025-01-11", eval_days=3)
    assert w.eval_start == _day("2025-01-08")


def test_explicit_evaluation_window_is_kept():
    w = resolve_windows(
        train_start="2025-01-01",
        train_end="2025-02-01",
        eval_start="2025-02-01",
        eval_end="2025-02-08",
    )
    assert (w.train_end, w.eval_start, w.eval_end) == (
        _day("2025-02-01"),
        _day("2025-02-01"),
        _day("2025-02-08"),
    )


def test_relative_windows_end_label_delay_before_as_of():
    w = resolve_windows(as_of="2025-03-31", train_days=20, eval_days=5, label_delay_days=7)
    assert w.eval_end == _day("2025-03-24")
    assert w.eval_start == _day("2025-03-19")
    assert (w.train_start, w.train_end) == (_day("2025-02-27"), _day("2025-03-19"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"train_start": "2025-01-05", "train_end": "2025-01-01"}, "must be after"),
        ({"train_start": "2025-01-01"}, "train_start and train_end"),
        ({"train_start": "2025-01-01", "train_end": "2025-01-02", "eval_days": 5}, "no training"),
        ({"as_of": "2025-03-01", "train_days": 0, "eval_days": 3}, "train_days > 0"),
        ({"train_start": "yesterday-ish", "train_end": "2025-01-02"}, "train_start: not a date"),
        (
            {
                "train_start": "2025-01-01",
                "train_end": "2025-02-01",
                "eval_start": "2025-01-20",
                "eval_end": "2025-02-10",
            },
            "at or after train_end",
        ),
    ],
)
def test_bad_windows_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        resolve_windows(**kwargs)


def _table(n_days: int, fraud_days: set[int]) -> pd.DataFrame:
    rows = []
    for d in range(n_days):
        for i in range(3):
            row = {name: 1.0 for name in c.MODEL_INPUTS}
            row.update(
                {
                    c.TRANSACTION_ID: f"t{d}-{i}",
                    c.CUSTOMER_ID: f"c{i}",
                    c.TIMESTAMP: _day("2025-01-01") + pd.Timedelta(days=d, hours=i),
                    c.LABEL: int(d in fraud_days and i == 0),
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


def test_split_rejects_empty_and_fraudless_windows():
    w = resolve_windows(train_start="2025-01-01", train_end="2025-01-11")
    with pytest.raises(ValueError, match=r"evaluation window \[2025-01-09, 2025-01-11\).*no fraud"):
        split(_table(10, {1, 2}), w)
    with pytest.raises(ValueError, match="evaluation window.*no transactions"):
        split(_table(5, {1}), w)
    result = split(_table(10, {1, 9}), w)
    assert result.counts() == {
        "train_rows": 24,
        "train_frauds": 1,
        "eval_rows": 6,
        "eval_frauds": 1,
    }


def test_card_precision_at_k_by_hand():
    # Day 1: cards a (fraud), b, c; day 2: cards a, b (fraud). k=2.
    df = pd.DataFrame(
        {
            c.TIMESTAMP: [_day("2025-01-01")] * 4 + [_day("2025-01-02")] * 2,
            c.CUSTOMER_ID: ["a", "a", "b", "c", "a", "b"],
            c.LABEL: [0, 1, 0, 0, 0, 1],
        }
    )
    scores = np.array([0.9, 0.1, 0.5, 0.8, 0.7, 0.2])
    # Day 1 top-2 cards by max score: a (0.9, compromised), c (0.8) -> 1/2.
    # Day 2 top-2: a (0.7), b (0.2, compromised) -> 1/2.
    assert card_precision_at_k(df, scores, k=2) == pytest.approx(0.5)
    assert card_precision_at_k(df, scores, k=1) == pytest.approx(0.5)  # day1 a=1, day2 a=0


def test_recall_at_fpr_and_confusion():
    y = np.array([0] * 100 + [1] * 4)
    scores = np.concatenate([np.linspace(0, 0.5, 100), [0.9, 0.8, 0.495, 0.1]])
    # One false positive (0.5) is allowed at 1 % FPR: the cut at 0.495 catches 3 of 4 frauds.
    assert recall_at_fpr(y, scores, 0.01) == pytest.approx(0.75)
    assert recall_at_fpr(y, scores, 0.0) == pytest.approx(0.5)
    assert confusion(y, scores, 0.6) == [[100, 0], [2, 2]]


def test_thresholds_follow_the_alert_budget():
    scores = np.linspace(0, 1, 10_001)
    t = thresholds_from_budget(scores, GateConfig(review_budget=0.01, block_budget=0.002))
    assert (scores >= t["review"]).mean() == pytest.approx(0.01, abs=2e-4)
    assert (scores >= t["block"]).mean() == pytest.approx(0.002, abs=2e-4)
    assert t["block"] >= t["review"]


def test_blessing_floors_and_regression():
    gate = GateConfig(min_auc=0.8, min_average_precision=0.3, regression_tolerance=0.1)
    good = {"auc_roc": 0.95, "average_precision": 0.6}
    assert bless(good, None, gate) == (True, [])
    ok, reasons = bless({"auc_roc": 0.7, "average_precision": 0.2}, None, gate)
    assert not ok and len(reasons) == 2 and "AUC ROC 0.7000 below floor 0.8" in reasons[0]
    assert bless(good, {"auc_roc": 0.95, "average_precision": 0.66}, gate)[0]
    ok, reasons = bless(good, {"auc_roc": 0.95, "average_precision": 0.7}, gate)
    assert not ok and "regresses" in reasons[0]


def _family(blessed: bool, ap: float, auc: float = 0.9) -> dict:
    metrics = {"auc_roc": auc, "average_precision": ap}
    metrics |= {"card_precision_at_100": 0.25, "recall_at_1pct_fpr": 0.5}
    return {"blessed": blessed, "candidate": metrics}


def test_the_best_blessed_family_by_average_precision_is_chosen():
    # The better AP wins, whatever the order or the AUC.
    assert choose_family({"mlp": _family(True, 0.61), "gbt": _family(True, 0.68, 0.8)}) == "gbt"
    assert choose_family({"gbt": _family(True, 0.55), "mlp": _family(True, 0.60)}) == "mlp"
    # An unblessed family is passed over, even with the better AP.
    assert choose_family({"mlp": _family(True, 0.50), "gbt": _family(False, 0.90)}) == "mlp"
    # None blessed: the best AP is still the verdict's (and push refuses it).
    assert choose_family({"mlp": _family(False, 0.30), "gbt": _family(False, 0.40)}) == "gbt"
    # A tie goes to the family listed first; a lone family is chosen.
    assert choose_family({"gbt": _family(True, 0.5), "mlp": _family(True, 0.5)}) == "gbt"
    assert choose_family({"mlp": _family(False, 0.1)}) == "mlp"
    with pytest.raises(ValueError, match="no model family"):
        choose_family({})


def test_comparison_table_lists_every_family_and_marks_the_chosen():
    table = comparison_table({"mlp": _family(True, 0.6123), "gbt": _family(False, 0.7)}, "mlp")
    head, mlp, gbt = table.splitlines()
    assert head.split() == ["family", "AP", "AUC", "ROC", "CP@100", "recall@1%FPR", "blessed"]
    assert mlp.split() == ["mlp", "0.6123", "0.9000", "0.2500", "0.5000", "yes", "<-", "chosen"]
    assert gbt.split() == ["gbt", "0.7000", "0.9000", "0.2500", "0.5000", "no"]


def test_feature_profile_bins_cover_everything():
    values = np.arange(1000, dtype=float)
    prof = feature_profile(values, bins=10)
    assert len(prof["proportions"]) == len(prof["edges"]) - 1 == 10
    assert sum(prof["proportions"]) == pytest.approx(1.0)
    assert prof["proportions"] == pytest.approx([0.1] * 10)


def test_feature_profile_edges_fall_between_values_so_rounding_keeps_the_bin():
    # Most rows share one score, as the rows in one leaf of every tree do.
    tied = np.float64(np.float32(0.0009909794))
    values = np.concatenate(
        [np.full(890, tied), np.linspace(0.0005, 0.0009, 10), np.full(100, 0.5)]
    )
    prof = feature_profile(values)
    inner = np.asarray(prof["edges"][1:-1])
    assert not np.isin(inner, values).any()
    # The same score a few ulps off (float32 text read back, another runtime's kernels): the
    # training bin.
    bin_of = lambda v: int(np.searchsorted(inner, v, side="right"))  # noqa: E731
    for near in (float(str(np.float32(tied))), tied * (1 - 1e-7), tied * (1 + 1e-7)):
        assert near != tied and bin_of(near) == bin_of(tied)
    bins = np.searchsorted(inner, values, side="right")
    assert np.bincount(bins).tolist() == [round(p * len(values)) for p in prof["proportions"]]


def _fake_saved_model(path: Path) -> Path:
    # A real (tiny) SavedModel, so the push sees what a trainer writes.
    import tensorflow as tf

    class M(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32)])
        def __call__(self, x):
            return {c.SCORE_OUTPUT: x}

    m = M()
    tf.saved_model.save(m, str(path), signatures={c.SERVING_SIGNATURE: m.__call__})
    return path


def test_push_is_atomic_and_versions_increase(tmp_path):
    candidate = _fake_saved_model(tmp_path / "candidate")
    base = tmp_path / "models"
    seen_partial = []
    stop = threading.Event()

    def reader():
        # A model server's view: every integer directory must be complete when it appears.
        while not stop.is_set():
            for p in base.glob("*") if base.exists() else []:
                if p.name.isdigit() and not (p / METADATA_FILE).exists():
                    seen_partial.append(p.name)
            time.sleep(0.0005)

    t = threading.Thread(target=reader)
    t.start()
    try:
        versions = [push(candidate, base, _METADATA)[0] for _ in range(5)]
    finally:
        stop.set()
        t.join()
    assert versions == [1, 2, 3, 4, 5]
    assert model_versions(base) == versions
    assert not seen_partial
    assert not [p for p in base.iterdir() if p.name.startswith(".")]
    assert ModelMetadata.read(base / "3") == replace(_METADATA, version=3)


def test_push_refuses_missing_base_path_and_model(tmp_path):
    with pytest.raises(ValueError, match="model_base_path is empty"):
        push(tmp_path, "", _METADATA)
    with pytest.raises(FileNotFoundError, match="no SavedModel"):
        push(tmp_path / "nothing", tmp_path / "models", _METADATA)


def test_is_night_outside_the_graph_equals_the_graphs_night_flag():
    import tensorflow as tf

    rng = np.random.default_rng(5)
    # Every hour boundary of a few days (both sides of 22:00 and 06:00), and random instants
    # over several years including a leap day.
    edges = 1_735_689_600 + np.arange(0, 3 * 86_400, 3_600)
    t = np.concatenate([edges, edges - 1, rng.integers(1_577_836_800, 1_767_225_600, 5_000)])
    stamps = pd.to_datetime(t, unit="s", utc=True).strftime(c.TIMESTAMP_FORMAT).to_numpy()
    inputs = {name: tf.zeros([len(t)], tf.float32) for name in c.MODEL_INPUTS}
    inputs[c.TIMESTAMP] = tf.constant(stamps.astype(str))
    in_graph = c.derived_features(inputs)[c.IS_NIGHT].numpy().astype(bool)
    np.testing.assert_array_equal(c.is_night(t), in_graph)
    assert 0.3 < in_graph.mean() < 0.37  # 8 of 24 hours
