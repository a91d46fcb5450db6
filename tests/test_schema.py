"""Raw schema validation: every error names the file, the row and the field, in every format."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pandas as pd
import pytest

from app.cli import main
from core import contract as c
from core.dataio import (
    DataValidationError,
    format_timestamps,
    read_transactions,
    write_transactions,
)
from core.simulator import SimulationConfig, simulate

FORMATS = ("csv", "csv.gz", "parquet")
BAD = 3  # 0-based data row that a test corrupts
T0 = pd.Timestamp("2025-03-01T08:00:00Z")


def _frame(n: int = 8) -> pd.DataFrame:
    """A valid raw frame as text, exactly as a CSV reader with dtype=str would see it."""
    return pd.DataFrame(
        {
            c.TRANSACTION_ID: [f"T{i:04d}" for i in range(n)],
            c.TIMESTAMP: [
                (T0 + pd.Timedelta(minutes=7 * i)).strftime(c.TIMESTAMP_FORMAT) for i in range(n)
            ],
            c.CUSTOMER_ID: [f"C{i % 3}" for i in range(n)],
            c.TERMINAL_ID: [f"M{i % 2}" for i in range(n)],
            c.AMOUNT: [f"{10 + 1.25 * i:.2f}" for i in range(n)],
            c.LABEL: ["1" if i == 5 else "0" for i in range(n)],
        }
    )


def _typed(df: pd.DataFrame) -> pd.DataFrame:
    """Native Parquet types for every column whose values all convert; text for the rest."""
    out = df.copy()
    converters = {
        c.AMOUNT: pd.to_numeric,
        c.LABEL: pd.to_numeric,
        c.TIMESTAMP: lambda s: pd.to_datetime(s, format=c.TIMESTAMP_FORMAT, utc=True),
    }
    for col, convert in converters.items():
        if col in out.columns:
            with contextlib.suppress(ValueError, TypeError):
                out[col] = convert(out[col])
    return out


def _write(df: pd.DataFrame, tmp_path, fmt: str, name: str = "tx"):
    path = tmp_path / f"{name}.{fmt}"
    if fmt == "parquet":
        _typed(df).to_parquet(path, index=False)
    else:
        df.to_csv(path, index=False, compression="gzip" if fmt.endswith("gz") else None)
    return path


def _row(fmt: str, i: int) -> int:
    """The row number a person finds: CSV line (header = line 1), or 1-based Parquet row."""
    return i + 1 if fmt == "parquet" else i + 2


def _assert_names(err: DataValidationError, path, row: int | None, field: str) -> None:
    message = str(err)
    assert str(path) in message
    assert field in message
    if row is not None:
        assert f"row {row}" in message


def _set(df: pd.DataFrame, field: str, value) -> pd.DataFrame:
    df = df.copy()
    df.loc[BAD, field] = value
    return df


CORRUPTIONS = [
    pytest.param(c.TIMESTAMP, "yesterday", "unparsable", id="ts-text"),
    pytest.param(c.TIMESTAMP, "2025-02-30T10:00:00Z", "unparsable", id="ts-no-such-day"),
    pytest.param(c.TIMESTAMP, "03/01/2025 10:00", "unparsable", id="ts-not-iso"),
    pytest.param(c.AMOUNT, "-4.50", "negative", id="amount-negative"),
    pytest.param(c.AMOUNT, "ten", "not a number", id="amount-text"),
    pytest.param(c.AMOUNT, "12,50", "not a number", id="amount-comma"),
    pytest.param(c.LABEL, "2", "0 or 1", id="label-2"),
    pytest.param(c.LABEL, "yes", "0 or 1", id="label-text"),
    pytest.param(c.LABEL, "", "0 or 1", id="label-empty"),
    pytest.param(c.CUSTOMER_ID, "", "empty", id="customer-empty"),
]


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize(("field", "value", "reason"), CORRUPTIONS)
def test_bad_value_names_file_row_and_field(tmp_path, fmt, field, value, reason):
    path = _write(_set(_frame(), field, value), tmp_path, fmt)
    with pytest.raises(DataValidationError) as info:
        read_transactions(path)
    err = info.value
    assert [(e.row, e.field) for e in err.errors] == [(_row(fmt, BAD), field)]
    assert reason in err.errors[0].reason
    _assert_names(err, path, _row(fmt, BAD), field)


@pytest.mark.parametrize("fmt", FORMATS)
def test_duplicate_transaction_id_is_the_later_row(tmp_path, fmt):
    df = _frame()
    df.loc[BAD, c.TRANSACTION_ID] = df.loc[1, c.TRANSACTION_ID]
    path = _write(df, tmp_path, fmt)
    with pytest.raises(DataValidationError) as info:
        read_transactions(path)
    err = info.value
    assert [(e.row, e.field) for e in err.errors] == [(_row(fmt, BAD), c.TRANSACTION_ID)]
    assert f"first seen at row {_row(fmt, 1)}" in err.errors[0].reason
    _assert_names(err, path, _row(fmt, BAD), c.TRANSACTION_ID)


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("field", c.RAW_FIELDS)
def test_missing_column(tmp_path, fmt, field):
    path = _write(_frame().drop(columns=[field]), tmp_path, fmt)
    with pytest.raises(DataValidationError) as info:
        read_transactions(path)
    assert [e.field for e in info.value.errors] == [field]
    assert "missing" in info.value.errors[0].reason
    # In a CSV a missing column is a fault of the header, line 1.
    _assert_names(info.value, path, None if fmt == "parquet" else 1, field)


def test_missing_label_is_fine_for_live_data(tmp_path):
    path = _write(_frame()[list(c.LIVE_FIELDS)], tmp_path, "csv")
    df = read_transactions(path, require_label=False)
    assert list(df.columns) == list(c.LIVE_FIELDS)
    with pytest.raises(DataValidationError, match=c.LABEL):
        read_transactions(path)


def test_every_error_is_reported(tmp_path):
    df = _set(_frame(), c.AMOUNT, "-1")
    df.loc[6, c.TIMESTAMP] = "never"
    df.loc[6, c.LABEL] = "7"
    path = _write(df, tmp_path, "csv")
    with pytest.raises(DataValidationError) as info:
        read_transactions(path)
    assert [(e.row, e.field) for e in info.value.errors] == [
        (_row("csv", BAD), c.AMOUNT),
        (_row("csv", 6), c.LABEL),
        (_row("csv", 6), c.TIMESTAMP),
    ]
    assert str(info.value).startswith(f"{path}: 3 invalid value(s)")


def _messy_frame() -> tuple[pd.DataFrame, dict[int, list[str]], list[str]]:
    """12 rows, some bad (index -> fields at fault), and the ids that must survive."""
    df = _frame(12)
    df.loc[2, c.TIMESTAMP] = "garbage"
    df.loc[2, c.AMOUNT] = "-3"
    df.loc[5, c.LABEL] = "5"
    df.loc[7, c.TRANSACTION_ID] = df.loc[0, c.TRANSACTION_ID]
    # A bad row and its corrected re-send under the same id: the re-send is valid, keep it.
    df.loc[10, c.TRANSACTION_ID] = df.loc[9, c.TRANSACTION_ID]
    df.loc[9, c.AMOUNT] = "n/a"
    bad = {2: [c.AMOUNT, c.TIMESTAMP], 5: [c.LABEL], 7: [c.TRANSACTION_ID], 9: [c.AMOUNT]}
    keep = [df.loc[i, c.TRANSACTION_ID] for i in range(len(df)) if i not in bad]
    return df, bad, keep


@pytest.mark.parametrize("fmt", FORMATS)
def test_skip_invalid_writes_rejects_and_keeps_every_valid_row(tmp_path, fmt):
    df, bad, keep = _messy_frame()
    path = _write(df, tmp_path, fmt)
    rejects = tmp_path / "out" / "rejects.csv"
    clean = read_transactions(path, skip_invalid=True, rejects_path=rejects)

    assert sorted(clean[c.TRANSACTION_ID]) == sorted(keep)
    assert len(clean) == len(df) - len(bad)
    expected_amounts = df.drop(index=list(bad))[c.AMOUNT].astype(float)
    np.testing.assert_allclose(sorted(clean[c.AMOUNT]), sorted(expected_amounts))

    rej = pd.read_csv(rejects, dtype=str, keep_default_na=False)
    assert rej["source_row"].astype(int).tolist() == [_row(fmt, i) for i in sorted(bad)]
    assert set(rej["source_file"]) == {str(path)}
    for (_, line), i in zip(rej.iterrows(), sorted(bad), strict=True):
        for field in bad[i]:
            assert f"{field}: " in line["reject_reason"]
    if fmt != "parquet":  # rejected rows keep their original text
        assert rej.loc[0, c.TIMESTAMP] == "garbage"
        assert rej.loc[0, c.AMOUNT] == "-3"


def test_skip_invalid_default_rejects_path(tmp_path):
    df, bad, _ = _messy_frame()
    path = _write(df, tmp_path, "csv.gz", name="batch")
    read_transactions(path, skip_invalid=True)
    assert len(pd.read_csv(tmp_path / "batch.rejects.csv")) == len(bad)


def test_iso8601_offsets_are_normalised_to_utc(tmp_path):
    variants = [
        "2025-03-01T10:00:00Z",
        "2025-03-01T12:00:00+02:00",
        "2025-03-01T04:30:00-05:30",
        "2025-03-01T11:00:00+0100",
        "2025-03-01 10:00:00Z",
        "2025-03-01T10:00:00",  # no offset: UTC
        "2025-03-01T10:00:00.999Z",  # floored to the second
    ]
    df = _frame(len(variants))
    df[c.TIMESTAMP] = variants
    expected = pd.Timestamp("2025-03-01T10:00:00Z")
    for fmt in ("csv", "csv.gz"):
        out = read_transactions(_write(df, tmp_path, fmt))
        assert str(out[c.TIMESTAMP].dt.tz) == "UTC"
        assert (out[c.TIMESTAMP] == expected).all()
        assert set(format_timestamps(out[c.TIMESTAMP])) == {expected.strftime(c.TIMESTAMP_FORMAT)}

    # Parquet with native timestamps in another zone, and naive ones (taken as UTC).
    for ts in (
        pd.Series([expected] * len(variants)).dt.tz_convert("America/New_York"),
        pd.Series([expected] * len(variants)).dt.tz_localize(None),
    ):
        typed = _typed(df)
        typed[c.TIMESTAMP] = ts
        path = tmp_path / "native.parquet"
        typed.to_parquet(path, index=False)
        out = read_transactions(path)
        assert str(out[c.TIMESTAMP].dt.tz) == "UTC"
        assert (out[c.TIMESTAMP] == expected).all()


@pytest.mark.parametrize("fmt", FORMATS)
def test_core_fields_only_typed_and_in_stream_order(tmp_path, fmt):
    df = _frame(8)
    df.loc[6, c.TIMESTAMP] = df.loc[2, c.TIMESTAMP]  # a tie, broken by transaction id
    shuffled = df.sample(frac=1.0, random_state=3).reset_index(drop=True)
    out = read_transactions(_write(shuffled, tmp_path, fmt))
    assert list(out.columns) == list(c.RAW_FIELDS)
    assert str(out[c.TIMESTAMP].dtype) == "datetime64[ns, UTC]"
    assert out[c.AMOUNT].dtype == np.float64
    assert out[c.LABEL].dtype == np.int8
    assert out[c.TRANSACTION_ID].tolist() == [
        "T0000",
        "T0001",
        "T0002",
        "T0006",
        "T0003",
        "T0004",
        "T0005",
        "T0007",
    ]
    np.testing.assert_allclose(
        out.set_index(c.TRANSACTION_ID)[c.AMOUNT].sort_index(), df[c.AMOUNT].astype(float)
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_simulated_data_round_trips(tmp_path, fmt):
    sim = simulate(SimulationConfig(n_customers=60, n_terminals=120, n_days=10, seed=5))
    path = write_transactions(sim, tmp_path / f"sim.{fmt}")
    back = read_transactions(path)
    cols = list(c.RAW_FIELDS)
    pd.testing.assert_frame_equal(back[cols], sim[cols], check_dtype=False)
    assert c.FRAUD_PATTERN in back.columns  # extra columns are carried through


def test_cli_validate_exits_2_with_one_line_error(tmp_path, capsys):
    path = _write(_set(_frame(), c.AMOUNT, "-4.50"), tmp_path, "csv")
    out = tmp_path / "valid.parquet"
    code = main(["data", "validate", str(path), "--output", str(out)])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert str(path) in lines[0] and f"row {_row('csv', BAD)}" in lines[0]
    assert c.AMOUNT in lines[0] and "error" in lines[0]
    assert not out.exists()


def test_cli_validate_missing_file_exits_2(tmp_path, capsys):
    missing = tmp_path / "nope.csv"
    assert main(["data", "validate", str(missing), "--output", str(tmp_path / "o.csv")]) == 2
    assert str(missing) in capsys.readouterr().err


def test_cli_validate_skip_invalid(tmp_path, capsys):
    df, bad, keep = _messy_frame()
    path = _write(df, tmp_path, "csv")
    out, rejects, report = (tmp_path / n for n in ("v.parquet", "r.csv", "report.json"))
    args = ["data", "validate", str(path), "--output", str(out), "--skip-invalid"]
    code = main([*args, "--rejects", str(rejects), "--report", str(report)])
    assert code == 0
    assert f"{len(keep)} valid rows" in capsys.readouterr().out
    summary = json.loads(report.read_text())
    assert summary["rows_valid"] == len(keep)
    assert summary["rows_rejected"] == len(bad)
    assert summary["rejects_file"] == str(rejects)
    assert sorted(read_transactions(out)[c.TRANSACTION_ID]) == sorted(keep)


def test_cli_simulate_csv_gz_validate_and_build_features(tmp_path, capsys):
    raw, valid, feats = (tmp_path / n for n in ("raw.csv.gz", "valid.csv", "features.parquet"))
    sim = ["data", "simulate", "--customers", "40", "--terminals", "80", "--days", "6"]
    assert main([*sim, "--seed", "9", "--output", str(raw)]) == 0
    assert main(["data", "validate", str(raw), "--output", str(valid)]) == 0
    assert main(["features", "build", str(valid), "--output", str(feats)]) == 0
    assert main(["data", "summary", "--raw", str(valid), "--features", str(feats)]) == 0
    assert "rejected" in capsys.readouterr().out
    table = read_transactions(feats)
    expected = simulate(SimulationConfig(n_customers=40, n_terminals=80, n_days=6, seed=9))
    assert list(table[c.TRANSACTION_ID]) == list(expected[c.TRANSACTION_ID])
    assert set(c.STATEFUL_FEATURES) <= set(table.columns)
