"""The dataset a retrain trains on: the consumer's persisted transactions and labels merged with
a historical labelled base, with only the labels known at ``as_of``, checked against the
pipeline's windows before any training starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core import contract as c

__all__ = [
    "build_training_dataset",
    "check_windows",
    "checked_windows",
    "load_consumed_dataset",
    "write_training_dataset",
]

# The raw schema plus when each label became known: what the label cut-off needs.
_COLUMNS = [*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]


def load_consumed_dataset(state_dir: str | Path) -> Any:
    """What the consumer persisted under ``<state_dir>/dataset``, in the raw schema plus
    ``label_available_at``; transactions without a label yet keep a missing label."""
    from streaming.dataset import load_consumed

    return load_consumed(Path(state_dir), labelled_only=False)


def build_training_dataset(
    consumed: Any | None,
    base: Any | None = None,
    as_of: str | None = None,
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS,
) -> tuple[Any, dict[str, Any]]:
    """The labelled data a retrain may use at ``as_of``: (frame in the raw schema, summary).

    ``consumed``: what ``load_consumed_dataset`` returns (labels may be missing); ``base``: a
    historical labelled file (path, validated on reading) or frame in the raw schema.

    * both are merged and deduplicated by transaction id; a copy with a label known at ``as_of``
      wins over one without, then the base copy over the consumed one;
    * transactions after ``as_of`` (default: the latest event time) are dropped, and so are
      labels that became available after it (a base without ``label_available_at`` gets
      ``timestamp + label_delay_days``, the platform's label delay): no peeking at the future;
    * transactions left without a known label are dropped, because the pipeline trains on
      labelled rows only. With relative windows these all come after the windows' end.
    """
    df, info = _merge_sources(consumed, base, label_delay_days)
    cutoff = _cutoff(df, as_of)
    future = df[c.TIMESTAMP] > cutoff
    df = df.loc[~future]
    known = df[c.LABEL].notna() & (df[c.LABEL_AVAILABLE_AT] <= cutoff)
    df = df.assign(_known=known)
    df.loc[~known, c.LABEL] = float("nan")
    # One row per transaction: known label first, then the base file's copy.
    df = df.sort_values([c.TRANSACTION_ID, "_known", "_src"], ascending=[True, False, True])
    deduped = df.drop_duplicates(subset=[c.TRANSACTION_ID], keep="first")
    labelled = _labelled_rows(deduped)
    info.update(
        as_of=cutoff.isoformat(),
        after_as_of=int(future.sum()),
        duplicates=len(df) - len(deduped),
        unlabelled_dropped=int((~deduped["_known"]).sum()),
        rows=len(labelled),
        frauds=int(labelled[c.LABEL].sum()),
        first=labelled[c.TIMESTAMP].min().isoformat() if len(labelled) else None,
        last=labelled[c.TIMESTAMP].max().isoformat() if len(labelled) else None,
    )
    return labelled, info


def _merge_sources(
    consumed: Any | None, base: Any | None, label_delay_days: int
) -> tuple[Any, dict[str, Any]]:
    """Both sources stacked, ``_src`` 0 for the base and 1 for the consumed rows, with counts."""
    import pandas as pd

    frames = []
    info: dict[str, Any] = {"consumed_rows": 0, "base_rows": 0}
    if base is not None:
        base = _base_frame(base, label_delay_days)
        info["base_rows"] = len(base)
        frames.append(base[_COLUMNS].assign(_src=0))
    if consumed is not None:
        _require_columns(consumed, "consumed data")
        info["consumed_rows"] = len(consumed)
        frames.append(consumed[_COLUMNS].assign(_src=1))
    if not sum(len(f) for f in frames):
        raise ValueError("no training data: nothing consumed and no base data")
    df = pd.concat(frames, ignore_index=True)
    df[c.LABEL] = df[c.LABEL].astype("float64")
    return df, info


def _base_frame(base: Any, label_delay_days: int) -> Any:
    """The base as a frame of its own, with the platform's label delay where it has no
    ``label_available_at``."""
    import pandas as pd

    from core.dataio import read_transactions

    base = base.copy() if isinstance(base, pd.DataFrame) else read_transactions(base)
    if c.LABEL_AVAILABLE_AT not in base.columns:
        base[c.LABEL_AVAILABLE_AT] = base[c.TIMESTAMP] + pd.Timedelta(days=label_delay_days)
    _require_columns(base, "base data")
    return base


def _require_columns(frame: Any, what: str) -> None:
    missing = [col for col in _COLUMNS if col not in frame.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing} of the raw schema")


def _cutoff(df: Any, as_of: str | None) -> Any:
    """``as_of`` as a UTC timestamp (naive means UTC), or the latest event time."""
    import pandas as pd

    if as_of is None:
        return df[c.TIMESTAMP].max()
    cutoff = pd.Timestamp(as_of)
    return cutoff.tz_localize("UTC") if cutoff.tzinfo is None else cutoff.tz_convert("UTC")


def _labelled_rows(deduped: Any) -> Any:
    from core.dataio import sort_stream_order

    labelled = deduped.loc[deduped["_known"], _COLUMNS].copy()
    labelled[c.LABEL] = labelled[c.LABEL].astype("int8")
    return sort_stream_order(labelled)


def write_training_dataset(
    state_dir: Path | None,
    base_data: Path | None,
    as_of: str | None,
    label_delay_days: int,
    target: Path,
) -> tuple[Any, dict[str, Any]]:
    """Build the dataset from ``<state_dir>/dataset`` and ``base_data`` and write it to
    ``target``: (frame, summary with ``path``), as ``build_training_dataset`` gives them."""
    from core.dataio import write_transactions

    consumed = None
    if state_dir is not None and (Path(state_dir) / "dataset").exists():
        consumed = load_consumed_dataset(state_dir)
    elif base_data is None:
        raise ValueError(
            f"no training data: {state_dir}/dataset does not exist (has the consumer "
            "run with this --state-dir?) and no base data is configured"
        )
    frame, info = build_training_dataset(consumed, base_data, as_of, label_delay_days)
    write_transactions(frame, target)
    info["path"] = str(target)
    return frame, info


def check_windows(frame: Any, windows: Any, source: str) -> dict[str, int]:
    """Fail before spending minutes in the pipeline when a window has no rows or no fraud."""
    ts = frame[c.TIMESTAMP]
    counts: dict[str, int] = {}
    for name, lo, hi in (
        ("train", windows.train_start, windows.train_end),
        ("eval", windows.eval_start, windows.eval_end),
    ):
        part = frame.loc[(ts >= lo) & (ts < hi)]
        counts[f"{name}_rows"], counts[f"{name}_frauds"] = len(part), int(part[c.LABEL].sum())
        if part.empty or not part[c.LABEL].any():
            raise ValueError(
                f"{source}: the {name} window [{lo}, {hi}) has {len(part)} labelled "
                f"transactions and {counts[f'{name}_frauds']} frauds: not enough to retrain "
                "(more history needed, or other windows)"
            )
    return counts


def checked_windows(
    frame: Any, window_params: dict[str, Any], label_delay_days: int, source: str
) -> dict[str, Any]:
    """The windows the pipeline's window parameters resolve to (``windows``, as strings) and
    their row and fraud counts; raises as ``check_windows`` does. Empty parameters are unset."""
    from core.windows import resolve_windows

    resolved = resolve_windows(
        label_delay_days=label_delay_days, **{k: v for k, v in window_params.items() if v != ""}
    )
    return {"windows": resolved.as_strings(), **check_windows(frame, resolved, source)}
