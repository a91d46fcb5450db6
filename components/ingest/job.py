"""The ingest step as one plain function over file paths: what its KFP component calls.

Kept free of KFP types so the step is unit-testable and runnable on its own (component.py beside
this module is its KFP wrapper).
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger("fraud.pipeline")


def ingest_step(
    data_path: str,
    train_path: str,
    eval_path: str,
    *,
    label_delay_days: int,
    **window_args,
) -> dict:
    from components.ingest.ingest import ingest
    from core.datajobs import data_version
    from core.windows import resolve_windows

    windows = resolve_windows(label_delay_days=label_delay_days, **window_args)
    result = ingest(data_path, windows, label_delay_days)
    for frame, path in ((result.train, train_path), (result.eval, eval_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    info = {**result.counts(), **windows.as_strings(), "data_version": data_version(data_path)}
    log.info("ingest: %s", info)
    return info
