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
    schedule_time: str = "",
    **window_args,
) -> dict:
    """``window_args`` are those of ``core.windows.resolve_windows``. ``schedule_time`` is the
    run's (scheduled) start: the ``as_of`` of a run that names neither ``as_of`` nor training
    dates, so that each recurring run trains on the windows that end at its own time."""
    from components.ingest.ingest import ingest
    from core.datajobs import data_version
    from core.windows import resolve_windows

    window_args = with_schedule_time(window_args, schedule_time)
    windows = resolve_windows(label_delay_days=label_delay_days, **window_args)
    result = ingest(data_path, windows, label_delay_days)
    for frame, path in ((result.train, train_path), (result.eval, eval_path)):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        frame.to_parquet(path, index=False)
    info = {**result.counts(), **windows.as_strings(), "data_version": data_version(data_path)}
    log.info("ingest: %s", info)
    return info


def with_schedule_time(window_args: dict, schedule_time: str) -> dict:
    """``window_args`` with ``as_of`` set to ``schedule_time`` when they fix no window."""
    from core.windows import parse_day

    fixed = ("as_of", "train_start", "train_end", "eval_start", "eval_end")
    if any(window_args.get(key) for key in fixed) or not schedule_time:
        return window_args
    # An unsubstituted placeholder is not a time: say which input holds it.
    parse_day(schedule_time, "schedule_time (the run's schedule time)")
    return {**window_args, "as_of": schedule_time}
