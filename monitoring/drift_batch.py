"""One ``DriftMonitor.update`` call's input, checked and put in the shape the windows count.

``read_batch`` takes the consumer's batch as it has it (columns or rows of model inputs, the
scores, optional decisions and event times) and returns a ``Batch`` of float columns and
decision flags, or raises ValueError/TypeError naming what does not fit.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from core import contract as c


class Batch(NamedTuple):
    """One update's rows: a float column per monitored value (the inputs and the score, by
    name), the alerted and blocked flags, and the event times (epoch s; None: unknown)."""

    columns: dict[str, np.ndarray]
    alerted: np.ndarray
    blocked: np.ndarray
    times: np.ndarray | None


def read_batch(
    features: Mapping[str, Any] | Sequence[Mapping[str, Any]],
    scores: Any,
    decisions: Sequence[str] | None,
    event_times: Any,
    inputs: tuple[str, ...],
    score_name: str,
    thresholds: tuple[float, float],
) -> Batch:
    """The ``Batch`` of ``inputs`` and the scores (under ``score_name``); without
    ``decisions``, the flags come from the scores and the (review, block) ``thresholds``;
    without ``event_times``, the times are the ``contract.TIMESTAMP`` column when present."""
    cols, ts_column = _columns(features, inputs)
    score = _column(scores)
    n = len(score)
    for name, col in cols.items():
        if len(col) != n:
            raise ValueError(f"drift update: {name!r} has {len(col)} values for {n} scores")
    if decisions is None:
        review, block = thresholds
        alerted, blocked = score >= review, score >= block
    else:
        alerted, blocked = _flags(decisions, n)
    if event_times is None:
        event_times = ts_column
    times = None if event_times is None else _epoch_seconds(event_times, n)
    cols[score_name] = score
    return Batch(cols, alerted, blocked, times)


def _columns(features: Any, inputs: tuple[str, ...]) -> tuple[dict[str, np.ndarray], Any]:
    if isinstance(features, Mapping):
        cols = features
    elif isinstance(features, Sequence):
        keys = features[0].keys() if features else inputs
        names = [n for n in (*inputs, c.TIMESTAMP) if n in keys]
        try:
            cols = {n: [row[n] for row in features] for n in names}
        except KeyError as err:
            raise ValueError(f"drift update: a feature row lacks {err}") from err
    else:
        raise TypeError(
            "drift update: features must be a mapping of columns or a sequence of row "
            f"mappings, got {type(features).__name__}"
        )
    missing = [n for n in inputs if n not in cols]
    if missing:
        raise ValueError(f"drift update: features lack monitored input(s) {missing}")
    return {n: _column(cols[n]) for n in inputs}, cols.get(c.TIMESTAMP)


def _column(values: Any) -> np.ndarray:
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _flags(decisions: Sequence[str], n: int) -> tuple[np.ndarray, np.ndarray]:
    """(alerted, blocked) per decision."""
    dec = np.asarray(decisions, dtype=object).reshape(-1)
    if len(dec) != n:
        raise ValueError(f"drift update: {len(dec)} decisions for {n} scores")
    unknown = set(dec.tolist()) - set(c.DECISIONS)
    if unknown:
        raise ValueError(f"drift update: unknown decision(s) {sorted(unknown)}")
    blocked = dec == c.BLOCK
    return blocked | (dec == c.REVIEW), blocked


def _epoch_seconds(values: Any, n: int) -> np.ndarray:
    """Event times as epoch seconds from numbers, ISO-8601 strings or datetimes."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iuf":
        out = arr.astype(np.float64).reshape(-1)
    else:
        import pandas as pd

        flat = arr.reshape(-1)
        if arr.dtype.kind == "S":
            flat = np.char.decode(flat, "utf-8")
        # format="ISO8601" exists from pandas 2 on; 1.x parses mixed ISO forms without it.
        iso = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}
        ts = pd.to_datetime(pd.Series(flat), utc=True, **iso)
        out = (ts.astype("int64") // 1_000_000_000).to_numpy(dtype=np.float64)
    if len(out) != n:
        raise ValueError(f"drift update: {len(out)} event times for {n} transactions")
    return out
