"""The ``handbook`` simulator profile: the transaction generator of the Fraud Detection Handbook
(Le Borgne et al., "Reproducible Machine Learning for Credit Card Fraud Detection - Practical
Handbook", chapter "Transaction data simulator"), written from its published description.

Legitimate traffic:

* customers and terminals uniform on a 100 x 100 grid; a customer uses, uniformly, the terminals
  closer than ``radius`` to it;
* per customer: amounts normal(mean, mean / 2) with mean ~ U(5, 100), a negative draw redrawn as
  U(0, 2 * mean), rounded to the cent; transactions per day Poisson(rate) with rate ~ U(0, 4);
* time of day normal(noon, 20,000 s), whole seconds; draws outside the day are dropped (not
  moved), as the book does.

Fraud, applied in this order as the book does (a later scenario relabels an earlier one):

1. ``amount_over_220``: every amount above 220 is fraud;
2. ``compromised_terminal``: each day but the last, 2 distinct terminals are drawn; all their
   transactions of that day and the next 27 are fraud;
3. ``compromised_card``: each day but the last, 3 distinct customers are drawn; of their
   transactions that day and the next 13, a third (rounded down) drawn at random get their amount
   multiplied by 5 and are fraud (amounts are not re-checked against scenario 1).

The book's own run (5,000 customers, 10,000 terminals, 183 days from 2018-04-01) reports 1,754,155
transactions, 14,681 frauds (0.84 %), of which 978 from scenario 1, 9,099 from scenario 2 and
4,604 from scenario 3 (``BOOK_FIGURES``). The book's fields map onto the raw contract one to one:
TRANSACTION_ID, TX_DATETIME, CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD, TX_FRAUD_SCENARIO
(named); ``label_available_at`` is the transaction time plus ``label_delay_days``, the delay the
book's terminal features assume. The book has no other field, and the contract needs none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from core import contract as c
from core.simulator import LEGIT, nearby_terminals, raw_frame

AMOUNT_OVER_220, COMPROMISED_TERMINAL, COMPROMISED_CARD = SCENARIOS = (
    "amount_over_220",
    "compromised_terminal",
    "compromised_card",
)
AMOUNT_LIMIT = 220.0
TERMINAL_DAYS = 28
TERMINALS_PER_DAY = 2
CARD_DAYS = 14
CARDS_PER_DAY = 3
CARD_AMOUNT_FACTOR = 5.0

# What the book's run of its generator reports (chapter "Transaction data simulator").
BOOK_FIGURES = {
    "transactions": 1_754_155,
    "frauds": 14_681,
    "frauds_by_scenario": {
        "amount_over_220": 978,
        "compromised_terminal": 9_099,
        "compromised_card": 4_604,
    },
}


@dataclass(frozen=True)
class HandbookConfig:
    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 183
    start_date: str = "2018-04-01"
    seed: int = 0
    radius: float = 5.0
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS

    def __post_init__(self) -> None:
        for name in ("n_customers", "n_terminals", "n_days"):
            if getattr(self, name) < 1:
                raise ValueError(
                    f"handbook profile: {name} must be >= 1, got {getattr(self, name)}"
                )
        if not self.radius > 0:
            raise ValueError(f"handbook profile: radius must be > 0, got {self.radius}")
        if self.label_delay_days < 0:
            raise ValueError("handbook profile: label_delay_days must be >= 0")
        try:
            pd.Timestamp(self.start_date, tz="UTC")
        except (ValueError, TypeError) as err:
            raise ValueError(
                f"handbook profile: start_date {self.start_date!r} is not a date (YYYY-MM-DD)"
            ) from err

    def to_dict(self) -> dict:
        return asdict(self)


def _legitimate(cfg: HandbookConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Customer profiles, terminals and the genuine transactions (day index, seconds in day)."""
    C, T, D = cfg.n_customers, cfg.n_terminals, cfg.n_days
    cust_xy = rng.uniform(0, 100, (C, 2))
    mean_amt = rng.uniform(5, 100, C)
    rate = rng.uniform(0, 4, C)
    term_xy = rng.uniform(0, 100, (T, 2))
    near, near_idx = nearby_terminals(cust_xy, term_xy, cfg.radius)

    counts = rng.poisson(np.repeat(rate, D)).reshape(C, D)
    customer = np.repeat(np.repeat(np.arange(C), D), counts.ravel())
    day = np.repeat(np.tile(np.arange(D), C), counts.ravel())
    secs = np.trunc(rng.normal(c.SECONDS_PER_DAY / 2, 20_000, len(customer))).astype(np.int64)
    keep = (secs > 0) & (secs < c.SECONDS_PER_DAY)
    customer, day, secs = customer[keep], day[keep], secs[keep]
    n = len(customer)
    mean = mean_amt[customer]
    amount = rng.normal(mean, mean / 2)
    negative = amount < 0
    amount[negative] = rng.uniform(0, 2 * mean[negative])
    offset, length = near_idx[customer, 0], near_idx[customer, 1]
    terminal = near[offset + (rng.random(n) * length).astype(np.int64)]
    return {
        "customer": customer,
        "terminal": terminal,
        "day": day,
        "secs": secs,
        "amount": np.round(amount, 2),
    }


@dataclass(frozen=True)
class Incidents:
    """The fraud scenarios' draws: row d holds what is compromised from day index d on."""

    terminals: np.ndarray  # (n_days - 1, TERMINALS_PER_DAY) terminal indices
    cards: np.ndarray  # (n_days - 1, CARDS_PER_DAY) customer indices


def _streams(seed: int) -> list[np.random.Generator]:
    """Independent generators for the legitimate traffic, the compromised terminals, the
    compromised cards and the cards' fraudulent transactions, so each can be drawn alone."""
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(4)]


def incidents(cfg: HandbookConfig) -> Incidents:
    """Which terminals and cards are compromised on which day (each day but the last, distinct
    within a day, as the book draws them)."""
    _, terminal_rng, card_rng, _ = _streams(cfg.seed)

    def draw(rng: np.random.Generator, population: int, per_day: int) -> np.ndarray:
        k = min(per_day, population)
        days = max(cfg.n_days - 1, 0)
        return np.array([rng.choice(population, k, replace=False) for _ in range(days)]).reshape(
            days, k
        )

    return Incidents(
        draw(terminal_rng, cfg.n_terminals, TERMINALS_PER_DAY),
        draw(card_rng, cfg.n_customers, CARDS_PER_DAY),
    )


def _on_compromised_terminal(
    cfg: HandbookConfig, found: Incidents, terminal: np.ndarray, day: np.ndarray
) -> np.ndarray:
    """Scenario 2: which transactions fall on a terminal while it is compromised."""
    active = np.zeros((cfg.n_terminals, cfg.n_days), dtype=bool)
    for d0, picked in enumerate(found.terminals):
        active[picked, d0 : d0 + TERMINAL_DAYS] = True
    return active[terminal, day]


def _defraud_cards(
    cfg: HandbookConfig,
    found: Incidents,
    rng: np.random.Generator,
    tx: dict[str, np.ndarray],
    pattern: np.ndarray,
) -> None:
    """Scenario 3, in place: a third of each day's compromised cards' transactions over the next
    14 days turn fraud, their amount x5."""
    key = tx["customer"].astype(np.int64) * cfg.n_days + tx["day"]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    code = SCENARIOS.index("compromised_card") + 1
    for d0, cards in enumerate(found.cards):
        first = cards.astype(np.int64) * cfg.n_days + d0
        lo = np.searchsorted(sorted_key, first)
        hi = np.searchsorted(sorted_key, first + min(CARD_DAYS, cfg.n_days - d0))
        rows = np.concatenate([order[a:b] for a, b in zip(lo, hi, strict=True)])
        hit = rng.choice(rows, len(rows) // 3, replace=False)
        tx["amount"][hit] *= CARD_AMOUNT_FACTOR
        pattern[hit] = code


def simulate_handbook(cfg: HandbookConfig) -> pd.DataFrame:
    """Generate the dataset, sorted in stream order, in the raw schema plus extra columns
    (``fraud_pattern`` is ``legit`` or one of ``SCENARIOS``)."""
    legit_rng, _, _, hit_rng = _streams(cfg.seed)
    tx = _legitimate(cfg, legit_rng)
    found = incidents(cfg)
    pattern = np.zeros(len(tx["amount"]), dtype=np.int8)
    pattern[tx["amount"] > AMOUNT_LIMIT] = SCENARIOS.index("amount_over_220") + 1
    on_terminal = _on_compromised_terminal(cfg, found, tx["terminal"], tx["day"])
    pattern[on_terminal] = SCENARIOS.index("compromised_terminal") + 1
    _defraud_cards(cfg, found, hit_rng, tx, pattern)
    start = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp())
    return raw_frame(
        start + tx["day"] * c.SECONDS_PER_DAY + tx["secs"],
        tx["customer"],
        tx["terminal"],
        tx["amount"],
        pattern,
        (LEGIT, *SCENARIOS),
        cfg.label_delay_days,
    )


def fidelity(df: pd.DataFrame) -> dict[str, float]:
    """Transactions, fraud rate and each scenario's share of the frauds, for the bench to set
    beside ``BOOK_FIGURES``. A fraud counts for the scenario that labelled it last; the book
    counts it for the first, which differs only where scenarios overlap (a few dozen frauds)."""
    frauds = int(df[c.LABEL].sum())
    counts = df[c.FRAUD_PATTERN].value_counts()
    out = {"transactions": float(len(df)), "fraud_rate": frauds / max(len(df), 1)}
    for name in SCENARIOS:
        out[f"share_{name}"] = int(counts.get(name, 0)) / max(frauds, 1)
    return out


def book_fidelity() -> dict[str, float]:
    """``fidelity`` of the book's own dataset, from its published figures."""
    total, frauds = BOOK_FIGURES["transactions"], BOOK_FIGURES["frauds"]
    out = {"transactions": float(total), "fraud_rate": frauds / total}
    for name, n in BOOK_FIGURES["frauds_by_scenario"].items():
        out[f"share_{name}"] = n / frauds
    return out
