"""Training and evaluation windows: resolved from explicit dates or relative to an ``as_of`` day,
and clipped so that training starts only once the window features have their full history."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from core import contract as c

DEFAULT_EVAL_FRACTION = 0.2


def parse_day(value: str | None, name: str) -> pd.Timestamp | None:
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
    ts, te = parse_day(train_start, "train_start"), parse_day(train_end, "train_end")
    es, ee = parse_day(eval_start, "eval_start"), parse_day(eval_end, "eval_end")
    asof = parse_day(as_of, "as_of")
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
