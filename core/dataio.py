"""Reading and validating raw transaction files (CSV, gzipped CSV, Parquet) against the contract.

Every problem is reported with the file, the row and the field. Rows are numbered as a person
finds them: for CSV the line number in the file (header = line 1), for Parquet the 1-based row.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from core import contract as c


@dataclass(frozen=True)
class RowError:
    row: int
    field: str
    reason: str
    # A well-formed value outside the contract's bounds (the stream dead-letters an event time
    # out of range under its own reason kind).
    out_of_range: bool = False


class DataValidationError(ValueError):
    """Bad input, with every location that made it bad (first few in the message)."""

    def __init__(self, path: str | os.PathLike, errors: list[RowError]):
        self.path = str(path)
        self.errors = errors
        shown = "; ".join(f"row {e.row}, field '{e.field}': {e.reason}" for e in errors[:5])
        more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
        super().__init__(f"{self.path}: {len(errors)} invalid value(s): {shown}{more}")


def _is_parquet(path: Path) -> bool:
    return path.suffix in {".parquet", ".pq"}


def _first_row_number(path: Path) -> int:
    # CSV: data starts on line 2 (after the header); Parquet rows are counted from 1.
    return 1 if _is_parquet(path) else 2


def read_raw(path: str | os.PathLike) -> pd.DataFrame:
    """Read a file as it is (strings kept as strings), failing clearly if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        if _is_parquet(path):
            return pd.read_parquet(path)
        # dtype=str keeps ids like "007" intact and lets validation see the original text.
        return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
    except (ValueError, OSError) as err:
        raise DataValidationError(path, [RowError(0, "<file>", f"unreadable: {err}")]) from err


# ISO-8601 date or date-time, optional fraction, optional 'Z' or +-HH[:MM] offset (none = UTC).
_ISO8601 = (
    r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d+)?)?)?(?:Z|[+-]\d{2}(?::?\d{2})?)?"
)
_ISO8601_RE = re.compile(_ISO8601)
# pandas >= 2 parses mixed ISO-8601 forms only with format="ISO8601"; pandas 1.x does not know
# that format (it turns every value into NaT) but parses mixed ISO forms element-wise without it.
_ISO_FORMAT = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}


def _parse_timestamps(values: pd.Series) -> pd.Series:
    if pd.api.types.is_datetime64_any_dtype(values):
        ts = values
        if ts.dt.tz is None:
            ts = ts.dt.tz_localize("UTC")
        return ts.dt.tz_convert("UTC")
    text = values.astype("string").str.strip()
    # Only ISO-8601 text is a timestamp: "01/02/2025" is ambiguous and must not be guessed.
    iso = text.str.fullmatch(_ISO8601).fillna(False).to_numpy(dtype=bool)
    candidates = text.to_numpy(dtype=object, na_value=None)
    candidates[~iso] = None
    return pd.to_datetime(
        pd.Series(candidates, index=values.index, dtype=object),
        errors="coerce",
        utc=True,
        **_ISO_FORMAT,
    )


def _far_timestamps(values: pd.Series, unparsed: np.ndarray) -> np.ndarray:
    """Which of the ``unparsed`` values are ISO-8601 times beyond datetime64[ns]'s years
    (1677-2262), e.g. 9999-12-31T23:59:59Z: out of range rather than unparsable."""
    far = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(unparsed):
        text = values.iloc[i]
        if not isinstance(text, str) or not _ISO8601_RE.fullmatch(text.strip()):
            continue
        try:
            ts = datetime.fromisoformat(text.strip())
        except ValueError:
            continue  # no such date (month 13): unparsable
        if ts.tzinfo is None:
            ts = ts.replace(tzinfo=UTC)
        far[i] = not c.MIN_TIMESTAMP <= ts.timestamp() < c.MAX_TIMESTAMP
    return far


def _bool_values(values: pd.Series) -> np.ndarray:
    """Which values are booleans (numeric to pandas, but no amount)."""
    if pd.api.types.is_bool_dtype(values):
        return np.ones(len(values), dtype=bool)
    if values.dtype != object:
        return np.zeros(len(values), dtype=bool)
    return values.map(lambda v: isinstance(v, bool | np.bool_)).to_numpy(dtype=bool)


def validate_frame(
    df: pd.DataFrame, path: str | os.PathLike, require_label: bool = True
) -> tuple[pd.DataFrame, list[RowError]]:
    """Normalise types and collect row errors; returns (clean rows, errors).

    Clean rows have ``timestamp`` as datetime64[ns, UTC] floored to the second, ``amount`` as
    float64, ``is_fraud`` as int8 and ids as str. Extra columns are carried through. Amounts
    must be finite numbers (not booleans) in [0, ``contract.MAX_AMOUNT``], timestamps (floored)
    in [``contract.MIN_TIMESTAMP``, ``contract.MAX_TIMESTAMP``); values that are well-formed but
    outside these bounds are reported with ``RowError.out_of_range``.
    """
    path = Path(path)
    required = c.RAW_FIELDS if require_label else c.LIVE_FIELDS
    missing = [f for f in required if f not in df.columns]
    if missing:
        raise DataValidationError(
            path, [RowError(1, f, "required column is missing") for f in missing]
        )
    first = _first_row_number(path)
    rows = np.arange(len(df)) + first
    bad = np.zeros(len(df), dtype=bool)
    errors: list[RowError] = []

    def flag(mask: np.ndarray, field: str, reason_of, out_of_range: bool = False) -> None:
        nonlocal bad
        for i in np.flatnonzero(mask):
            errors.append(RowError(int(rows[i]), field, reason_of(i), out_of_range))
        bad |= mask

    out = df.copy()
    for field in c.STRING_FIELDS:
        col = df[field]
        empty = col.isna().to_numpy() | (col.astype(str).str.strip() == "").to_numpy()
        flag(empty, field, lambda i: "empty")
        text = col.astype(str)
        flag(
            (text.str.len() > c.MAX_ID_CHARS).to_numpy() & ~empty,
            field,
            lambda i, text=text: (
                f"{len(text.iloc[i]):,} characters, above the maximum {c.MAX_ID_CHARS}"
            ),
        )
        out[field] = text

    ts = _parse_timestamps(df[c.TIMESTAMP]).dt.floor("s")
    unparsed = ts.isna().to_numpy()
    far = _far_timestamps(df[c.TIMESTAMP], unparsed)
    flag(
        unparsed & ~far,
        c.TIMESTAMP,
        lambda i: f"unparsable timestamp {df[c.TIMESTAMP].iloc[i]!r}",
    )
    low = pd.Timestamp(c.MIN_TIMESTAMP, unit="s", tz="UTC")
    high = pd.Timestamp(c.MAX_TIMESTAMP, unit="s", tz="UTC")
    flag(
        far | ((ts < low) | (ts >= high)).to_numpy(),
        c.TIMESTAMP,
        lambda i: (
            f"timestamp {df[c.TIMESTAMP].iloc[i]!r} outside the valid range "
            f"[{c.MIN_TIMESTAMP_TEXT}, {c.MAX_TIMESTAMP_TEXT})"
        ),
        out_of_range=True,
    )
    out[c.TIMESTAMP] = ts

    raw_amount = df[c.AMOUNT]
    amount = pd.to_numeric(raw_amount, errors="coerce").astype("float64")
    values = amount.to_numpy()
    finite = np.isfinite(values)
    flag(
        ~finite | _bool_values(raw_amount),
        c.AMOUNT,
        lambda i: f"not a number: {raw_amount.iloc[i]!r}",
    )
    flag(values < 0, c.AMOUNT, lambda i: f"negative amount {values[i]}")
    flag(
        finite & (values > c.MAX_AMOUNT),
        c.AMOUNT,
        lambda i: f"amount {float(values[i])!r} above the maximum {c.MAX_AMOUNT:,.0f}",
        out_of_range=True,
    )
    out[c.AMOUNT] = amount

    if c.LABEL in df.columns:
        label = pd.to_numeric(df[c.LABEL], errors="coerce")
        flag(
            ~label.isin([0, 1]).to_numpy(),
            c.LABEL,
            lambda i: f"must be 0 or 1, got {df[c.LABEL].iloc[i]!r}",
        )
        out[c.LABEL] = label.fillna(0).astype("int8")

    # Among the otherwise valid rows, the first occurrence of an id wins and later ones are the
    # duplicates (a row already rejected for another reason does not claim its id, so a corrected
    # re-send of it is kept).
    ids = out[c.TRANSACTION_ID].to_numpy()
    dup = np.zeros(len(df), dtype=bool)
    valid = np.flatnonzero(~bad)
    dup[valid] = pd.Series(ids[valid]).duplicated(keep="first").to_numpy()
    first_row = {}
    if dup.any():
        dup_ids = set(ids[dup])
        for i in valid[np.isin(ids[valid], list(dup_ids))]:
            first_row.setdefault(ids[i], int(rows[i]))
    flag(
        dup,
        c.TRANSACTION_ID,
        lambda i: (
            f"duplicate id {out[c.TRANSACTION_ID].iloc[i]!r} (first seen at row "
            f"{first_row[out[c.TRANSACTION_ID].iloc[i]]})"
        ),
    )
    errors.sort(key=lambda e: (e.row, e.field))
    return out.loc[~bad].reset_index(drop=True), errors


def read_transactions(
    path: str | os.PathLike,
    *,
    require_label: bool = True,
    skip_invalid: bool = False,
    rejects_path: str | os.PathLike | None = None,
) -> pd.DataFrame:
    """Read and validate a raw transactions file, sorted in stream order.

    Strict by default: any invalid value raises ``DataValidationError``. With ``skip_invalid``
    the bad rows go, with their reasons, to ``rejects_path`` (default ``<file>.rejects.csv``) and
    the valid rest is returned.
    """
    path = Path(path)
    raw = read_raw(path)
    clean, errors = validate_frame(raw, path, require_label=require_label)
    if errors:
        if not skip_invalid:
            raise DataValidationError(path, errors)
        write_rejects(raw, errors, path, rejects_path or default_rejects_path(path))
    return sort_stream_order(clean)


def default_rejects_path(path: Path) -> Path:
    name = path.name.split(".")[0]
    return path.with_name(f"{name}.rejects.csv")


def write_rejects(
    raw: pd.DataFrame, errors: list[RowError], path: Path, rejects_path: str | os.PathLike
) -> Path:
    """Write each rejected row once, in its original text, with all of its reasons."""
    reasons: dict[int, list[str]] = {}
    for e in errors:
        reasons.setdefault(e.row, []).append(f"{e.field}: {e.reason}")
    first = _first_row_number(path)
    idx = [r - first for r in sorted(reasons)]
    rejected = raw.iloc[idx].copy()
    rejected.insert(0, "source_row", sorted(reasons))
    rejected.insert(1, "reject_reason", ["; ".join(reasons[r]) for r in sorted(reasons)])
    rejected.insert(0, "source_file", str(path))
    rejects_path = Path(rejects_path)
    rejects_path.parent.mkdir(parents=True, exist_ok=True)
    rejected.to_csv(rejects_path, index=False)
    return rejects_path


def sort_stream_order(df: pd.DataFrame) -> pd.DataFrame:
    """The one ordering every engine uses: event time, then transaction id for ties."""
    return df.sort_values([c.TIMESTAMP, c.TRANSACTION_ID], kind="mergesort").reset_index(drop=True)


def format_timestamps(ts: pd.Series) -> pd.Series:
    """Canonical ISO-8601 UTC strings (the serving graph parses exactly this form)."""
    return ts.dt.strftime(c.TIMESTAMP_FORMAT)


def write_transactions(df: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write a frame in the raw schema; timestamps as canonical strings in CSV, native in Parquet."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if _is_parquet(path):
        df.to_parquet(tmp, index=False)
    else:
        out = df.copy()
        for col in (c.TIMESTAMP, c.LABEL_AVAILABLE_AT):
            if col in out.columns and pd.api.types.is_datetime64_any_dtype(out[col]):
                out[col] = format_timestamps(out[col])
        out.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    os.replace(tmp, path)
    return path
