"""Ingest: raw data -> batch features -> time-split training and evaluation windows."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from components import contract as c
from components.dataio import read_transactions
from components.features.batch import build_feature_table

# The columns every later step needs: model inputs, the label, and what evaluation groups by.
SPLIT_COLUMNS: tuple[str, ...] = (c.TRANSACTION_ID, c.CUSTOMER_ID, *c.MODEL_INPUTS, c.LABEL)
DEFAULT_EVAL_FRACTION = 0.2


def _day(value: str | None, name: str) -> pd.Timestamp | None:
    if value in (None, ""):
        return None
    try:
        ts = pd.Timestamp(value)
    except ValueError as err:
        raise ValueError(f"{name}: not a date: {value!r}") from err
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(frozen=True)
class Windows:
    """Resolved [start, end) windows, UTC."""

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    eval_start: pd.Timestamp
    eval_end: pd.Timestamp

    def as_strings(self) -> dict[str, str]:
        return {k: v.isoformat() for k, v in asdict(self).items()}


def resolve_windows(
    *,
    train_start: str | None = None,
    train_end: str | None = None,
    eval_start: str | None = None,
    eval_end: str | None = None,
    as_of: str | None = None,
    train_days: int = 0,
    eval_days: int = 0,
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS,
) -> Windows:
    """Explicit dates (start inclusive, end exclusive) or relative to ``as_of``.

    Relative: the windows end ``label_delay_days`` before ``as_of`` so every label in them was
    known at ``as_of``; evaluation is the last ``eval_days``, training the ``train_days`` before.
    Explicit without an evaluation window: the last ``eval_days`` (default a fifth) of the
    training period becomes the evaluation window.
    """
    ts, te = _day(train_start, "train_start"), _day(train_end, "train_end")
    es, ee = _day(eval_start, "eval_start"), _day(eval_end, "eval_end")
    asof = _day(as_of, "as_of")
    day = pd.Timedelta(days=1)
    if asof is not None:
        if ts or te:
            raise ValueError(
                "give either as_of (relative windows) or train_start/train_end, not both"
            )
        if train_days <= 0 or eval_days <= 0:
            raise ValueError("relative windows need train_days > 0 and eval_days > 0")
        end = asof.normalize() - label_delay_days * day
        w = Windows(
            end - (eval_days + train_days) * day, end - eval_days * day, end - eval_days * day, end
        )
    else:
        if ts is None or te is None:
            raise ValueError("give train_start and train_end (or as_of with train_days/eval_days)")
        if te <= ts:
            raise ValueError(f"train_end {te.date()} must be after train_start {ts.date()}")
        if es is None and ee is None:
            span_days = (te - ts) / day
            carve = eval_days if eval_days > 0 else max(1, round(span_days * DEFAULT_EVAL_FRACTION))
            if carve >= span_days:
                raise ValueError(
                    f"evaluation window of {carve} days leaves no training data in "
                    f"[{ts.date()}, {te.date()})"
                )
            w = Windows(ts, te - carve * day, te - carve * day, te)
        else:
            if es is None or ee is None:
                raise ValueError("give both eval_start and eval_end, or neither")
            if ee <= es:
                raise ValueError(f"eval_end {ee.date()} must be after eval_start {es.date()}")
            if es < te:
                raise ValueError(f"evaluation window must start at or after train_end {te.date()}")
            w = Windows(ts, te, es, ee)
    return w


@dataclass
class IngestResult:
    train: pd.DataFrame
    eval: pd.DataFrame
    windows: Windows

    def counts(self) -> dict[str, float]:
        return {
            "train_rows": len(self.train),
            "train_frauds": int(self.train[c.LABEL].sum()),
            "eval_rows": len(self.eval),
            "eval_frauds": int(self.eval[c.LABEL].sum()),
        }


def split(table: pd.DataFrame, windows: Windows, source: str = "data") -> IngestResult:
    """Cut a feature table into the windows and check each is usable for training/evaluation."""
    t = table[c.TIMESTAMP]
    parts = {}
    for name, lo, hi in (
        ("training", windows.train_start, windows.train_end),
        ("evaluation", windows.eval_start, windows.eval_end),
    ):
        part = table.loc[(t >= lo) & (t < hi), list(SPLIT_COLUMNS)].reset_index(drop=True)
        where = f"{name} window [{lo.date()}, {hi.date()}) of {source}"
        if part.empty:
            raise ValueError(f"{where} has no transactions")
        if part[c.LABEL].sum() == 0:
            raise ValueError(f"{where} has no fraud labels: nothing to learn or measure")
        parts[name] = part
    return IngestResult(parts["training"], parts["evaluation"], windows)


def history_warmup(label_delay_days: int) -> pd.Timedelta:
    """How much history the window features need before they mean what they mean at serving
    time: the longest customer window, and the terminal windows shifted by the label delay."""
    longest = max(
        max(c.CUSTOMER_WINDOWS.values()),
        label_delay_days * c.SECONDS_PER_DAY + max(c.TERMINAL_WINDOWS.values()),
    )
    return pd.Timedelta(seconds=longest)


def clip_to_history(windows: Windows, data_start: pd.Timestamp, label_delay_days: int) -> Windows:
    """Start training no earlier than the data's start plus the feature warm-up.

    Rows earlier than that have truncated window features (a 30-day count over 3 days of data);
    a model trained on them, and drift checks against their statistics, would see a skew that
    live traffic never has.
    """
    earliest = data_start + history_warmup(label_delay_days)
    if windows.train_start >= earliest:
        return windows
    if earliest >= windows.train_end:
        raise ValueError(
            f"training window [{windows.train_start.date()}, {windows.train_end.date()}) lies "
            f"within the first {history_warmup(label_delay_days).days} days of the data (from "
            f"{data_start.date()}), where window features lack history; start it on or after "
            f"{earliest.date()}"
        )
    return Windows(earliest, windows.train_end, windows.eval_start, windows.eval_end)


def ingest(data_path: str, windows: Windows, label_delay_days: int) -> IngestResult:
    df = read_transactions(data_path)
    if df.empty:
        raise ValueError(f"{data_path}: no transactions")
    windows = clip_to_history(windows, df[c.TIMESTAMP].min(), label_delay_days)
    # Features need only the past, so rows after the last window are not worth computing.
    df = df.loc[df[c.TIMESTAMP] < windows.eval_end]
    table = build_feature_table(df, label_delay_days)
    return split(table, windows, source=str(data_path))
