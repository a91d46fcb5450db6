"""Seeded card-transaction simulator with structured legitimate behaviour and labelled fraud.

Legitimate: each customer has a home location, a spending profile (mean/std amount) and a
transaction rate; they shop at terminals within a radius of home, mostly in the daytime and more
at weekends. Fraud patterns (named in ``fraud_pattern``):

* ``stolen_card``: a few high-value purchases anywhere within a day or two;
* ``compromised_terminal``: every transaction on a terminal is fraud for some days;
* ``cnp_leak``: a leaked card gets extra, larger card-not-present purchases for some days;
* ``card_testing``: a burst of tiny transactions within minutes;
* ``night_skimming`` (drift only): cloned cards used at night near home, moderately above the
  customer's usual spend, appears from ``drift_day`` on;
* ``spend_shift`` drift changes legitimate behaviour instead (amounts and night share rise).

Everything is vectorised numpy so 1.7 M transactions take seconds; one seed, one dataset.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date

import numpy as np
import pandas as pd

from core import contract as c

DRIFT_KINDS = ("new_pattern", "spend_shift")
PATTERNS = ("stolen_card", "compromised_terminal", "cnp_leak", "card_testing", "night_skimming")
LEGIT = "legit"


@dataclass(frozen=True)
class SimulationConfig:
    n_customers: int = 5_000
    n_terminals: int = 10_000
    n_days: int = 180
    start_date: str = "2025-01-01"
    seed: int = 42
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    radius: float = 5.0
    weekend_factor: float = 1.25
    # Expected new incidents per day per 1,000 customers, so the fraud rate does not depend on
    # the population size. The defaults give an overall fraud rate of about 0.8 %.
    stolen_card_rate: float = 0.6
    compromised_terminal_rate: float = 0.35
    cnp_leak_rate: float = 0.3
    card_testing_rate: float = 0.25
    drift_day: int | None = None
    drift_kind: str = "new_pattern"
    drift_rate: float = 1.5

    def __post_init__(self) -> None:
        for name in ("n_customers", "n_terminals", "n_days"):
            if getattr(self, name) < 1:
                raise ValueError(f"simulation: {name} must be >= 1, got {getattr(self, name)}")
        if self.drift_kind not in DRIFT_KINDS:
            raise ValueError(f"simulation: drift_kind must be one of {DRIFT_KINDS}")
        if self.drift_day is not None and not 0 <= self.drift_day < self.n_days:
            raise ValueError(f"simulation: drift_day {self.drift_day} outside 0..{self.n_days - 1}")
        if self.label_delay_days < 0:
            raise ValueError("simulation: label_delay_days must be >= 0")
        for name in ("radius", "weekend_factor"):
            if not getattr(self, name) > 0:
                raise ValueError(f"simulation: {name} must be > 0, got {getattr(self, name)}")
        for name in (
            "stolen_card_rate",
            "compromised_terminal_rate",
            "cnp_leak_rate",
            "card_testing_rate",
            "drift_rate",
        ):
            if not getattr(self, name) >= 0:
                raise ValueError(f"simulation: {name} must be >= 0, got {getattr(self, name)}")
        try:
            start = (
                pd.Timestamp(self.start_date, tz="UTC")
                if isinstance(self.start_date, str | date)
                else pd.NaT
            )
        except (ValueError, TypeError):
            start = pd.NaT
        if pd.isna(start):
            raise ValueError(
                f"simulation: start_date {self.start_date!r} is not a date (YYYY-MM-DD)"
            )

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Rows:
    """Column arrays of generated transactions (seconds since epoch for time)."""

    ts: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    pattern: np.ndarray  # index into ("legit", *PATTERNS)

    @staticmethod
    def concat(parts: list[_Rows]) -> _Rows:
        return _Rows(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in _Rows.__annotations__)
        )


def nearby_terminals(cust_xy, term_xy, radius) -> tuple[np.ndarray, np.ndarray]:
    """Flat array of each customer's terminals within ``radius`` (nearest one if none), + offsets."""
    lists = []
    for lo in range(0, len(cust_xy), 512):
        block = cust_xy[lo : lo + 512]
        d2 = ((block[:, None, :] - term_xy[None, :, :]) ** 2).sum(-1)
        for row in d2:
            near = np.flatnonzero(row <= radius * radius)
            lists.append(near if len(near) else np.array([int(row.argmin())]))
    lengths = np.array([len(x) for x in lists])
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    return np.concatenate(lists), np.stack([offsets, lengths], axis=1)


def _daytime_seconds(rng, n: int) -> np.ndarray:
    """Daily rhythm: most purchases around early afternoon, some at any hour."""
    peak = rng.normal(13 * 3600, 3.5 * 3600, n)
    anytime = rng.uniform(0, 86_400, n)
    secs = np.where(rng.random(n) < 0.85, peak, anytime)
    return np.clip(secs, 0, 86_399).astype(np.int64)


def simulate(cfg: SimulationConfig) -> pd.DataFrame:
    """Generate the dataset, sorted in stream order, in the raw schema plus extra columns."""
    rng = np.random.default_rng(cfg.seed)
    start = int(pd.Timestamp(cfg.start_date, tz="UTC").timestamp())
    C, T, D = cfg.n_customers, cfg.n_terminals, cfg.n_days
    day = c.SECONDS_PER_DAY

    cust_xy = rng.uniform(0, 100, (C, 2))
    term_xy = rng.uniform(0, 100, (T, 2))
    mean_amt = rng.uniform(5, 100, C)
    std_amt = mean_amt / 2
    rate = rng.uniform(0.5, 3.2, C)
    near, near_idx = nearby_terminals(cust_xy, term_xy, cfg.radius)

    def pick_near(cust: np.ndarray) -> np.ndarray:
        off, length = near_idx[cust, 0], near_idx[cust, 1]
        return near[off + (rng.random(len(cust)) * length).astype(np.int64)]

    # Legitimate traffic.
    weekday = (pd.Timestamp(cfg.start_date).dayofweek + np.arange(D)) % 7
    day_factor = np.where(weekday >= 5, cfg.weekend_factor, 1.0)
    counts = rng.poisson(rate[:, None] * day_factor[None, :])
    cust = np.repeat(np.repeat(np.arange(C), D), counts.ravel())
    dayi = np.repeat(np.tile(np.arange(D), C), counts.ravel())
    n = len(cust)
    secs = _daytime_seconds(rng, n)
    amount = np.abs(rng.normal(mean_amt[cust], std_amt[cust]))
    if cfg.drift_day is not None and cfg.drift_kind == "spend_shift":
        shifted = dayi >= cfg.drift_day
        amount = np.where(shifted, amount * 1.6, amount)
        late = shifted & (rng.random(n) < 0.15)
        secs = np.where(late, rng.integers(0, 5 * 3600, n), secs)
    legit = _Rows(
        ts=start + dayi * day + secs,
        customer=cust,
        terminal=pick_near(cust),
        amount=amount,
        pattern=np.zeros(n, dtype=np.int8),
    )

    def incidents(rate_per_1000: float, first_day: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(day, customer) of each new incident, Poisson per day."""
        per_day = rng.poisson(rate_per_1000 * C / 1000, D)
        per_day[:first_day] = 0
        days = np.repeat(np.arange(D), per_day)
        return days, rng.integers(0, C, len(days))

    code = {p: i + 1 for i, p in enumerate(PATTERNS)}
    parts = [legit]

    # Stolen card: 2-6 high-value purchases at any terminal within ~1.5 days.
    d0, cu = incidents(cfg.stolen_card_rate)
    k = rng.integers(2, 7, len(cu))
    cu_r, d_r = np.repeat(cu, k), np.repeat(d0, k)
    m = len(cu_r)
    parts.append(
        _Rows(
            ts=start + d_r * day + rng.integers(0, int(1.5 * day), m),
            customer=cu_r,
            terminal=rng.integers(0, T, m),
            amount=rng.uniform(250, 1500, m) + mean_amt[cu_r] * rng.uniform(2, 5, m),
            pattern=np.full(m, code["stolen_card"], np.int8),
        )
    )

    # CNP leak: for 7-14 days, 1-3 extra purchases a day at 3-6x the customer's usual amount.
    d0, cu = incidents(cfg.cnp_leak_rate)
    dur = rng.integers(7, 15, len(cu))
    cu_d = np.repeat(cu, dur)
    day_d = np.repeat(d0, dur) + np.concatenate([np.arange(x) for x in dur]) if len(dur) else dur
    per = rng.integers(1, 4, len(cu_d))
    cu_r, d_r = np.repeat(cu_d, per), np.repeat(day_d, per)
    m = len(cu_r)
    parts.append(
        _Rows(
            ts=start + d_r * day + rng.integers(0, day, m),
            customer=cu_r,
            terminal=rng.integers(0, T, m),
            amount=mean_amt[cu_r] * rng.uniform(3, 6, m),
            pattern=np.full(m, code["cnp_leak"], np.int8),
        )
    )

    # Card testing: a burst of 5-15 tiny amounts, seconds to a minute apart.
    d0, cu = incidents(cfg.card_testing_rate)
    k = rng.integers(5, 16, len(cu))
    burst_start = start + d0 * day + rng.integers(0, day, len(cu))
    gaps = rng.integers(5, 60, k.sum())
    first = np.concatenate([[0], np.cumsum(k)[:-1]]) if len(k) else k
    offsets = (
        np.cumsum(gaps) - np.repeat(np.cumsum(gaps)[first] - gaps[first], k) if len(k) else gaps
    )
    cu_r = np.repeat(cu, k)
    m = len(cu_r)
    parts.append(
        _Rows(
            ts=np.repeat(burst_start, k) + offsets,
            customer=cu_r,
            terminal=np.repeat(rng.integers(0, T, len(cu)), k),
            amount=np.round(rng.uniform(0.5, 3.0, m), 2),
            pattern=np.full(m, code["card_testing"], np.int8),
        )
    )

    # Drift: night skimming: 2-5 purchases over 1-3 nights, near home, at 1.5-3x usual spend.
    if cfg.drift_day is not None and cfg.drift_kind == "new_pattern":
        d0, cu = incidents(cfg.drift_rate, first_day=cfg.drift_day)
        k = rng.integers(2, 6, len(cu))
        cu_r = np.repeat(cu, k)
        m = len(cu_r)
        parts.append(
            _Rows(
                ts=start
                + (np.repeat(d0, k) + rng.integers(0, 3, m)) * day
                + rng.integers(0, 5 * 3600, m),
                customer=cu_r,
                terminal=pick_near(cu_r),
                amount=mean_amt[cu_r] * rng.uniform(1.5, 3.0, m),
                pattern=np.full(m, code["night_skimming"], np.int8),
            )
        )

    rows = _Rows.concat(parts)
    keep = rows.ts < start + D * day  # incidents near the end spill past the period
    rows = _Rows(*(getattr(rows, f)[keep] for f in _Rows.__annotations__))

    # Compromised terminal: every transaction on it for 7-28 days is fraud.
    d0, _ = incidents(cfg.compromised_terminal_rate)
    terms = rng.integers(0, T, len(d0))
    t_start = start + d0 * day
    t_end = t_start + rng.integers(7, 29, len(d0)) * day
    key = rows.terminal.astype(np.int64) * (1 << 40) + rows.ts
    order = np.argsort(key, kind="stable")
    skey = key[order]
    lo = np.searchsorted(skey, terms.astype(np.int64) * (1 << 40) + t_start)
    hi = np.searchsorted(skey, terms.astype(np.int64) * (1 << 40) + t_end)
    marked = np.zeros(len(key), dtype=bool)
    for a, b in zip(lo, hi, strict=True):
        marked[order[a:b]] = True
    rows.pattern = np.where(
        marked & (rows.pattern == 0), code["compromised_terminal"], rows.pattern
    )

    return raw_frame(
        rows.ts,
        rows.customer,
        rows.terminal,
        rows.amount,
        rows.pattern,
        (LEGIT, *PATTERNS),
        cfg.label_delay_days,
    )


def raw_frame(
    ts: np.ndarray,
    customer: np.ndarray,
    terminal: np.ndarray,
    amount: np.ndarray,
    pattern: np.ndarray,
    pattern_names: tuple[str, ...],
    label_delay_days: int,
) -> pd.DataFrame:
    """Generated columns (epoch seconds, customer and terminal indices, amounts, index into
    ``pattern_names`` whose entry 0 is legitimate) as a frame in the raw schema plus the
    simulator's extra columns, sorted in stream order; every simulator profile writes this."""
    amount = np.round(amount, 2)
    order = np.lexsort((amount, terminal, customer, ts))
    n = len(order)
    when = pd.to_datetime(ts[order], unit="s", utc=True)
    pattern = pattern[order]
    return pd.DataFrame(
        {
            c.TRANSACTION_ID: pd.Series(np.arange(n))
            .astype(str)
            .str.zfill(10)
            .radd("T")
            .to_numpy(),
            c.TIMESTAMP: when,
            c.CUSTOMER_ID: _names("C", customer[order]),
            c.TERMINAL_ID: _names("M", terminal[order]),
            c.AMOUNT: amount[order],
            c.LABEL: (pattern > 0).astype(np.int8),
            c.FRAUD_PATTERN: np.array(pattern_names, dtype=object)[pattern],
            c.LABEL_AVAILABLE_AT: when + pd.Timedelta(days=label_delay_days),
        }
    )


def _names(prefix: str, index: np.ndarray) -> np.ndarray:
    """Ids ``<prefix>000042`` for entity indices."""
    top = int(index.max()) + 1 if len(index) else 0
    return np.array([f"{prefix}{i:06d}" for i in range(top)], dtype=object)[index]


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Rows and fraud rate per pattern, for the data summary."""
    total = len(df)
    g = df.groupby(c.FRAUD_PATTERN).size().rename("rows").to_frame()
    g["share_of_all_pct"] = 100 * g["rows"] / max(total, 1)
    return g.sort_values("rows", ascending=False)
