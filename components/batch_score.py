"""Batch scoring (`fraud score`): batch features over the file's history, then the served model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c
from core.dataio import read_transactions
from core.features.batch import build_feature_table
from core.metadata import ModelMetadata, Thresholds
from core.model import SavedModelScorer, resolve_model_dir
from core.windows import parse_day


def decisions(scores: np.ndarray, thresholds: Thresholds) -> np.ndarray:
    """Vectorised ``contract.decide``."""
    return np.where(
        scores >= thresholds.block,
        c.BLOCK,
        np.where(scores >= thresholds.review, c.REVIEW, c.APPROVE),
    )


def batch_score(
    model: str | Path,
    data: str | Path,
    output: str | Path,
    start: str | None = None,
    end: str | None = None,
) -> pd.DataFrame:
    model_dir = resolve_model_dir(model)
    meta = ModelMetadata.read(model_dir)
    df = read_transactions(data)
    lo, hi = parse_day(start, "start"), parse_day(end, "end")
    if hi is not None:
        df = df.loc[df[c.TIMESTAMP] < hi]  # later rows cannot change earlier features
    table = build_feature_table(df, meta.label_delay_days)
    if lo is not None:
        table = table.loc[table[c.TIMESTAMP] >= lo]
    if table.empty:
        raise ValueError(f"{data}: no transactions in [{start or '-'}, {end or '-'})")
    scores = SavedModelScorer(model_dir).score(table)
    out = pd.DataFrame(
        {
            c.TRANSACTION_ID: table[c.TRANSACTION_ID].to_numpy(),
            "score": scores,
            "decision": decisions(scores, meta.thresholds),
        }
    )
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    if output.suffix in {".parquet", ".pq"}:
        out.to_parquet(output, index=False)
    else:
        out.to_csv(output, index=False)
    return out
