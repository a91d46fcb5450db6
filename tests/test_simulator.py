"""The simulator: fraud rate, every pattern and its shape, determinism, rhythms and drift."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import yaml

from app.cli import main
from core import contract as c
from core.simulator import LEGIT, PATTERNS, SimulationConfig, simulate

STOLEN, COMPROMISED, CNP, TESTING, NIGHT = (
    "stolen_card",
    "compromised_terminal",
    "cnp_leak",
    "card_testing",
    "night_skimming",
)
BASE_PATTERNS = (STOLEN, COMPROMISED, CNP, TESTING)
DAY = pd.Timedelta(seconds=c.SECONDS_PER_DAY)


def test_pattern_names_are_the_simulators():
    assert set(PATTERNS) == {*BASE_PATTERNS, NIGHT}


def _day_index(df: pd.DataFrame, cfg: SimulationConfig) -> np.ndarray:
    start = pd.Timestamp(cfg.start_date, tz="UTC")
    return ((df[c.TIMESTAMP] - start) // DAY).to_numpy()


def test_fraud_rate_and_base_patterns(default_like):
    df = default_like
    rate = df[c.LABEL].mean()
    assert 0.005 <= rate <= 0.01, rate
    counts = df[c.FRAUD_PATTERN].value_counts()
    for pattern in BASE_PATTERNS:
        assert counts.get(pattern, 0) > 20, (pattern, counts)
    assert NIGHT not in counts  # only with new_pattern drift
    assert set(counts.index) <= {LEGIT, *PATTERNS}
    assert (df[c.LABEL] == (df[c.FRAUD_PATTERN] != LEGIT)).all()


def test_schema_and_stream_order(default_like, default_cfg):
    df = default_like
    assert list(df.columns[: len(c.RAW_FIELDS)]) == list(c.RAW_FIELDS)
    assert df[c.TRANSACTION_ID].is_unique
    assert (df[c.AMOUNT] >= 0).all()
    ordered = df.sort_values([c.TIMESTAMP, c.TRANSACTION_ID], kind="mergesort")
    assert (ordered.index == df.index).all()
    start = pd.Timestamp(default_cfg.start_date, tz="UTC")
    assert df[c.TIMESTAMP].min() >= start
    assert df[c.TIMESTAMP].max() < start + default_cfg.n_days * DAY


def test_label_available_at_is_timestamp_plus_delay(default_like, default_cfg):
    delay = pd.Timedelta(days=default_cfg.label_delay_days)
    assert (default_like[c.LABEL_AVAILABLE_AT] == default_like[c.TIMESTAMP] + delay).all()
    df = simulate(SimulationConfig(n_customers=50, n_terminals=100, n_days=5, label_delay_days=2))
    assert (df[c.LABEL_AVAILABLE_AT] - df[c.TIMESTAMP] == pd.Timedelta(days=2)).all()


def test_deterministic_per_seed_and_different_across_seeds():
    cfg = SimulationConfig(n_customers=300, n_terminals=600, n_days=20, seed=123, drift_day=10)
    first, again = simulate(cfg), simulate(cfg)
    pd.testing.assert_frame_equal(first, again)
    other = simulate(dataclasses.replace(cfg, seed=124))
    assert len(other) != len(first) or not other.equals(first)
    assert not np.array_equal(other[c.AMOUNT].to_numpy()[:100], first[c.AMOUNT].to_numpy()[:100])


def test_compromised_terminal_takes_every_transaction_in_its_window(default_like, default_cfg):
    df = default_like
    day = _day_index(df, default_cfg)
    hit = df[c.FRAUD_PATTERN] == COMPROMISED
    # Windows are whole days, so a compromised transaction puts its terminal's whole day in one.
    hit_days = set(zip(df.loc[hit, c.TERMINAL_ID], day[hit.to_numpy()], strict=True))
    in_window = np.array(
        [(t, d) in hit_days for t, d in zip(df[c.TERMINAL_ID], day, strict=True)], dtype=bool
    )
    assert in_window.sum() > hit.sum() * 0.99  # other patterns may also hit those terminals
    assert (df.loc[in_window, c.LABEL] == 1).all()
    # The pattern lasts days, not one transaction, and it is temporary: the same terminals are
    # legitimate outside their windows.
    per_terminal = pd.Series(day[hit.to_numpy()]).groupby(df.loc[hit, c.TERMINAL_ID].to_numpy())
    assert (per_terminal.nunique() >= 3).mean() > 0.8
    compromised_terminals = set(df.loc[hit, c.TERMINAL_ID])
    outside = df[c.TERMINAL_ID].isin(compromised_terminals).to_numpy() & ~in_window
    assert (df.loc[outside, c.LABEL] == 0).mean() > 0.95


def test_card_testing_bursts_are_tiny_and_within_minutes(default_like):
    df = default_like[default_like[c.FRAUD_PATTERN] == TESTING]
    df = df.sort_values([c.CUSTOMER_ID, c.TIMESTAMP], kind="mergesort")
    assert df[c.AMOUNT].between(0.5, 3.0).all()
    secs = df[c.TIMESTAMP].astype("int64").to_numpy() // 10**9
    cust = df[c.CUSTOMER_ID].to_numpy()
    new_burst = np.ones(len(df), dtype=bool)
    new_burst[1:] = (cust[1:] != cust[:-1]) | (np.diff(secs) > 60)
    burst = np.cumsum(new_burst)
    g = pd.DataFrame({"burst": burst, "secs": secs, "term": df[c.TERMINAL_ID].to_numpy()})
    stats = g.groupby("burst").agg(
        n=("secs", "size"), span=("secs", lambda s: s.max() - s.min()), terms=("term", "nunique")
    )
    assert len(stats) >= 10
    assert (stats["n"] <= 15).all()
    assert stats["n"].median() >= 5
    assert (stats["span"] <= 15 * 60).all()  # a burst is over within minutes
    assert (stats["terms"] == 1).all()  # one merchant is tested


def test_other_patterns_shape(default_like):
    df = default_like
    legit_mean = df.loc[df[c.LABEL] == 0].groupby(c.CUSTOMER_ID)[c.AMOUNT].mean()
    for pattern, low in ((STOLEN, 250.0), (CNP, 0.0)):
        rows = df[df[c.FRAUD_PATTERN] == pattern]
        assert (rows[c.AMOUNT] >= low).all()
        ratio = rows[c.AMOUNT].to_numpy() / legit_mean.reindex(rows[c.CUSTOMER_ID]).to_numpy()
        assert np.nanmedian(ratio) > 2.5, pattern  # well above the customer's usual spend


def test_weekend_effect_and_daily_rhythm(default_like, default_cfg):
    df = default_like[default_like[c.LABEL] == 0]
    day = _day_index(df, default_cfg)
    per_day = np.bincount(day, minlength=default_cfg.n_days)
    start = pd.Timestamp(default_cfg.start_date)
    weekend = (start.dayofweek + np.arange(default_cfg.n_days)) % 7 >= 5
    ratio = per_day[weekend].mean() / per_day[~weekend].mean()
    assert 1.15 < ratio < 1.35, ratio  # weekend_factor 1.25
    assert ((df[c.TIMESTAMP].dt.dayofweek >= 5) == weekend[day]).all()

    per_hour = np.bincount(df[c.TIMESTAMP].dt.hour, minlength=24)
    night_start, night_end = c.NIGHT_HOURS
    night = (np.arange(24) >= night_start) | (np.arange(24) < night_end)
    assert per_hour[night].mean() < 0.25 * per_hour[~night].mean()
    assert per_hour.argmax() in range(11, 16)  # early-afternoon peak


def test_new_pattern_drift_night_skimming_only_after_drift_day(default_cfg):
    cfg = dataclasses.replace(default_cfg, n_customers=1_000, drift_day=30)
    df = simulate(cfg)
    night = df[df[c.FRAUD_PATTERN] == NIGHT]
    assert len(night) > 50
    assert (_day_index(night, cfg) >= cfg.drift_day).all()
    night_start, night_end = c.NIGHT_HOURS
    hours = night[c.TIMESTAMP].dt.hour
    assert ((hours >= night_start) | (hours < night_end)).all()
    assert (night[c.LABEL] == 1).all()
    # The other patterns are there before and after the drift.
    before = df[_day_index(df, cfg) < cfg.drift_day]
    assert set(BASE_PATTERNS) <= set(before[c.FRAUD_PATTERN])
    shifted = simulate(dataclasses.replace(cfg, drift_kind="spend_shift"))
    assert NIGHT not in set(shifted[c.FRAUD_PATTERN])


def test_spend_shift_drift_raises_legit_amounts_after_drift_day(default_cfg):
    cfg = dataclasses.replace(default_cfg, n_customers=800, drift_day=30, drift_kind="spend_shift")
    df = simulate(cfg)
    legit = df[c.LABEL] == 0
    after = _day_index(df, cfg) >= cfg.drift_day
    mean_before = df.loc[legit & ~after, c.AMOUNT].mean()
    mean_after = df.loc[legit & after, c.AMOUNT].mean()
    assert mean_after > 1.4 * mean_before, (mean_before, mean_after)
    # Without drift the same customers spend the same before and after that day.
    calm = simulate(dataclasses.replace(cfg, drift_day=None))
    calm_after = _day_index(calm, cfg) >= cfg.drift_day
    calm_legit = calm[c.LABEL] == 0
    ratio = (
        calm.loc[calm_legit & calm_after, c.AMOUNT].mean()
        / calm.loc[calm_legit & ~calm_after, c.AMOUNT].mean()
    )
    assert 0.95 < ratio < 1.05


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"n_customers": 0}, "n_customers must be >= 1"),
        ({"n_terminals": -5}, "n_terminals must be >= 1"),
        ({"n_days": 0}, "n_days must be >= 1"),
        ({"drift_kind": "meteor"}, "drift_kind must be one of"),
        ({"drift_day": 180}, "drift_day 180 outside 0..179"),
        ({"drift_day": -1}, "drift_day -1 outside"),
        ({"label_delay_days": -1}, "label_delay_days must be >= 0"),
        ({"stolen_card_rate": -0.1}, "stolen_card_rate must be >= 0"),
        ({"drift_rate": float("nan")}, "drift_rate must be >= 0"),
        ({"radius": 0}, "radius must be > 0"),
        ({"start_date": "2025-02-30"}, "start_date '2025-02-30' is not a date"),
        ({"start_date": None}, "start_date None is not a date"),
        ({"start_date": 20250101}, "start_date 20250101 is not a date"),
    ],
)
def test_invalid_config_raises_clearly(overrides, message):
    with pytest.raises(ValueError, match="^simulation: ") as info:
        SimulationConfig(**overrides)
    assert message in str(info.value)


def test_zero_rates_give_no_fraud():
    rates = {f.name: 0.0 for f in dataclasses.fields(SimulationConfig) if f.name.endswith("_rate")}
    df = simulate(SimulationConfig(n_customers=100, n_terminals=200, n_days=10, **rates))
    assert len(df) > 0 and df[c.LABEL].sum() == 0


def test_cli_simulate_invalid_config_exits_2(tmp_path, capsys):
    output = tmp_path / "sim.parquet"
    assert main(["data", "simulate", "--days", "0", "--output", str(output)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "n_days must be >= 1" in err[0]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"simulate": {"n_customer": 10}}))
    assert main(["data", "simulate", "--params", str(params), "--output", str(output)]) == 2
    assert "unknown key(s) ['n_customer']" in capsys.readouterr().err
    assert not output.exists()
