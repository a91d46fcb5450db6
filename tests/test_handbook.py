"""The handbook simulator profile: determinism, the raw contract, and each fraud scenario's rule
checked exactly against the scenario draws."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from app.cli import main
from core import contract as c
from core.dataio import read_transactions
from core.handbook import (
    AMOUNT_LIMIT,
    CARD_DAYS,
    SCENARIOS,
    TERMINAL_DAYS,
    HandbookConfig,
    incidents,
    simulate_handbook,
)
from core.simulator import LEGIT

OVER_220, TERMINAL, CARD = SCENARIOS
SMALL = HandbookConfig(n_customers=400, n_terminals=800, n_days=60, seed=7)
DAY = pd.Timedelta(days=1)


@pytest.fixture(scope="module")
def small() -> pd.DataFrame:
    return simulate_handbook(SMALL)


def _index(ids: pd.Series) -> np.ndarray:
    """Entity index of ``C000042`` / ``M000042`` ids."""
    return ids.str[1:].astype(int).to_numpy()


def _day(df: pd.DataFrame, cfg: HandbookConfig) -> np.ndarray:
    return ((df[c.TIMESTAMP] - pd.Timestamp(cfg.start_date, tz="UTC")) // DAY).to_numpy()


def _in_windows(entity: np.ndarray, day: np.ndarray, draws: np.ndarray, days: int) -> np.ndarray:
    """Rows whose entity was drawn on a day d0 with d0 <= day < d0 + days."""
    hit = np.zeros(len(entity), dtype=bool)
    for d0, picked in enumerate(draws):
        hit |= np.isin(entity, picked) & (day >= d0) & (day < d0 + days)
    return hit


def test_deterministic_per_seed_and_different_across_seeds(small):
    pd.testing.assert_frame_equal(small, simulate_handbook(SMALL))
    other = simulate_handbook(dataclasses.replace(SMALL, seed=8))
    assert len(other) != len(small) or not np.array_equal(
        other[c.AMOUNT].to_numpy(), small[c.AMOUNT].to_numpy()
    )


def test_raw_contract_and_stream_order(small):
    assert list(small.columns[: len(c.RAW_FIELDS)]) == list(c.RAW_FIELDS)
    assert small[c.TRANSACTION_ID].is_unique
    assert (small[c.AMOUNT] >= 0).all()
    ordered = small.sort_values([c.TIMESTAMP, c.TRANSACTION_ID], kind="mergesort")
    assert (ordered.index == small.index).all()
    start = pd.Timestamp(SMALL.start_date, tz="UTC")
    secs_in_day = (small[c.TIMESTAMP] - small[c.TIMESTAMP].dt.floor("D")).dt.total_seconds()
    assert (secs_in_day > 0).all()  # the book drops draws outside (0, 86400) s
    assert small[c.TIMESTAMP].min() >= start
    assert small[c.TIMESTAMP].max() < start + SMALL.n_days * DAY
    delay = pd.Timedelta(days=SMALL.label_delay_days)
    assert (small[c.LABEL_AVAILABLE_AT] == small[c.TIMESTAMP] + delay).all()
    assert set(small[c.FRAUD_PATTERN]) == {LEGIT, *SCENARIOS}
    assert (small[c.LABEL] == (small[c.FRAUD_PATTERN] != LEGIT)).all()


def test_volume_follows_the_profiles():
    # Rate ~ U(0, 4) a day, times the share of normal(noon, 20000 s) draws inside the day.
    cfg = dataclasses.replace(SMALL, n_customers=2_000, n_terminals=2_000)
    df = simulate_handbook(cfg)
    expected = cfg.n_customers * cfg.n_days * 2.0 * 0.9693
    assert abs(len(df) / expected - 1) < 0.05, (len(df), expected)
    legit = df[df[c.LABEL] == 0]
    assert legit[c.AMOUNT].min() >= 0 and legit[c.AMOUNT].max() <= AMOUNT_LIMIT


def test_scenario_1_every_amount_over_220_is_fraud(small):
    assert (small.loc[small[c.AMOUNT] > AMOUNT_LIMIT, c.LABEL] == 1).all()
    assert (small.loc[small[c.FRAUD_PATTERN] == OVER_220, c.AMOUNT] > AMOUNT_LIMIT).all()
    assert (small[c.FRAUD_PATTERN] == OVER_220).sum() > 0


def test_scenario_2_compromised_terminals_take_28_days_of_transactions(small):
    found = incidents(SMALL)
    assert found.terminals.shape == (SMALL.n_days - 1, 2)
    assert all(len(set(row)) == 2 for row in found.terminals)
    window = _in_windows(
        _index(small[c.TERMINAL_ID]), _day(small, SMALL), found.terminals, TERMINAL_DAYS
    )
    pattern = small[c.FRAUD_PATTERN].to_numpy()
    assert (small[c.LABEL].to_numpy()[window] == 1).all()
    # Only scenario 3, applied after, relabels a compromised terminal's transaction.
    assert set(pattern[window]) == {TERMINAL, CARD}
    assert (pattern[window] == TERMINAL).mean() > 0.95
    assert not (pattern[~window] == TERMINAL).any()


def test_scenario_3_compromised_cards_lose_a_third_of_14_days_at_5x(small):
    found = incidents(SMALL)
    assert found.cards.shape == (SMALL.n_days - 1, 3)
    window = _in_windows(_index(small[c.CUSTOMER_ID]), _day(small, SMALL), found.cards, CARD_DAYS)
    card = (small[c.FRAUD_PATTERN] == CARD).to_numpy()
    assert card.sum() > 0 and not (card & ~window).any()
    # Amounts were rounded to the cent before x5: every such amount is a multiple of 0.05.
    cents = np.round(small.loc[card, c.AMOUNT].to_numpy() * 100).astype(np.int64)
    assert (cents % 5 == 0).all()


def test_scenario_3_takes_exactly_a_third_of_the_window():
    # Two days: one draw, on day 0, whose 14-day window covers every transaction of its cards.
    cfg = dataclasses.replace(SMALL, n_days=2, n_customers=30, seed=3)
    df = simulate_handbook(cfg)
    (cards,) = incidents(cfg).cards
    theirs = np.isin(_index(df[c.CUSTOMER_ID]), cards)
    assert theirs.sum() >= 3
    assert (df[c.FRAUD_PATTERN] == CARD).sum() == theirs.sum() // 3


def test_cli_writes_the_handbook_profile(tmp_path, capsys):
    out = tmp_path / "handbook.parquet"
    args = ["--customers", "60", "--terminals", "120", "--days", "12", "--seed", "5"]
    assert main(["data", "simulate", "--profile", "handbook", *args, "--output", str(out)]) == 0
    assert "transactions" in capsys.readouterr().out
    expected = simulate_handbook(HandbookConfig(n_customers=60, n_terminals=120, n_days=12, seed=5))
    got = read_transactions(out)
    pd.testing.assert_frame_equal(
        got[list(c.RAW_FIELDS)].reset_index(drop=True),
        expected[list(c.RAW_FIELDS)].reset_index(drop=True),
        check_dtype=False,
    )


def test_cli_refuses_the_platform_profiles_flags(tmp_path, capsys):
    out = tmp_path / "x.parquet"
    code = main(
        ["data", "simulate", "--profile", "handbook", "--drift-day", "3", "--output", str(out)]
    )
    assert code == 2
    err = capsys.readouterr().err
    assert "--drift-day" in err and "handbook" in err
    assert not out.exists()


def test_bad_config_is_named():
    with pytest.raises(ValueError, match="n_days"):
        HandbookConfig(n_days=0)
    with pytest.raises(ValueError, match="start_date"):
        HandbookConfig(start_date="April")
