"""Ingest: raw data -> batch features -> time-split training and evaluation windows."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from core import contract as c
from core.dataio import read_transactions
from core.features.batch import build_feature_table
from core.windows import Windows, clip_to_history

# The columns every later step needs: model inputs, the label, and what evaluation groups by.
SPLIT_COLUMNS: tuple[str, ...] = (c.TRANSACTION_ID, c.CUSTOMER_ID, *c.MODEL_INPUTS, c.LABEL)


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


def ingest(data_path: str, windows: Windows, label_delay_days: int) -> IngestResult:
    df = read_transactions(data_path)
    if df.empty:
        raise ValueError(f"{data_path}: no transactions")
    windows = clip_to_history(windows, df[c.TIMESTAMP].min(), label_delay_days)
    # Features need only the past, so rows after the last window are not worth computing.
    df = df.loc[df[c.TIMESTAMP] < windows.eval_end]
    table = build_feature_table(df, label_delay_days)
    return split(table, windows, source=str(data_path))
