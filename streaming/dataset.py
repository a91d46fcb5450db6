"""Append-only record of what the consumer saw, so a later retrain has fresh data.

Layout under ``<state_dir>/dataset``::

    transactions/part-<start>-<writer>-<n>.jsonl   one JSON object per line, contract.LIVE_FIELDS
    labels/part-<start>-<writer>-<n>.jsonl         messages.LABEL_FIELDS
    labels/_positions-<group>.jsonl                labels-topic offsets already written (a log:
                                                   the last complete line holds)

JSON Lines because the consumer already holds each record as a small dict (encoding one is
~1 us, a CSV row through the csv module several times that). Transactions are appended per batch
and flushed before the batch's offsets are committed, so a crash can duplicate rows but never
lose committed ones; ``load_consumed`` drops the duplicates (first occurrence of a transaction
id wins), skips a line truncated by a crash, and joins labels to transactions, giving a frame in
the raw schema that ``core.dataio`` validates like any raw file.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import IO, Any

import orjson

from core import contract as c
from streaming.messages import LABEL_FIELDS, Label

TRANSACTIONS_DIR = "transactions"
LABELS_DIR = "labels"
DEFAULT_ROWS_PER_FILE = 250_000


class _JsonlAppender:
    """Appends JSON objects to part files, starting a new file every ``rows_per_file`` rows."""

    def __init__(self, directory: Path, writer_id: str, rows_per_file: int) -> None:
        self.dir = directory
        self.writer_id = writer_id
        self.rows_per_file = rows_per_file
        self._file: IO[bytes] | None = None
        self._rows_in_file = 0
        self._files = 0

    def append(self, records: Iterable[dict[str, Any]]) -> int:
        n = 0
        for record in records:
            if self._file is None or self._rows_in_file >= self.rows_per_file:
                self._open_next()
            assert self._file is not None
            self._file.write(orjson.dumps(record) + b"\n")
            self._rows_in_file += 1
            n += 1
        return n

    def flush(self) -> None:
        # The page cache survives a killed process; fsync would only add power-loss safety.
        if self._file is not None:
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open_next(self) -> None:
        self.close()
        self.dir.mkdir(parents=True, exist_ok=True)
        start = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        path = self.dir / f"part-{start}-{self.writer_id}-{self._files:05d}.jsonl"
        self._files += 1
        self._file = open(path, "ab")  # noqa: SIM115 - closed in close()
        self._rows_in_file = 0


class ConsumedDataset:
    """Writer for one consumer instance; ``group_id`` scopes the labels bookkeeping."""

    def __init__(
        self, state_dir: Path, group_id: str, rows_per_file: int = DEFAULT_ROWS_PER_FILE
    ) -> None:
        self.root = Path(state_dir) / "dataset"
        writer_id = f"{socket.gethostname()}-{os.getpid()}-{int(time.time())}"
        self._tx = _JsonlAppender(self.root / TRANSACTIONS_DIR, writer_id, rows_per_file)
        self._labels = _JsonlAppender(self.root / LABELS_DIR, writer_id, rows_per_file)
        self._positions_path = self.root / LABELS_DIR / f"_positions-{_safe(group_id)}.jsonl"
        self.label_positions: dict[int, int] = self._load_positions()
        self._positions_log: IO[bytes] | None = None

    def append_transactions(self, rows: Iterable[dict[str, Any]]) -> int:
        """Validated rows keyed by ``contract.LIVE_FIELDS`` (canonical timestamps)."""
        return self._tx.append(rows)

    def wants_label(self, partition: int, offset: int) -> bool:
        """False for labels an earlier run of this group already wrote (the topic is re-read)."""
        return offset >= self.label_positions.get(partition, 0)

    def append_labels(self, labels: Sequence[tuple[int, int, Label]]) -> int:
        """(partition, offset, label) triples; records the new positions after writing."""
        if not labels:
            return 0
        n = self._labels.append(
            dict(
                zip(
                    LABEL_FIELDS,
                    (
                        lab.transaction_id,
                        lab.terminal_id,
                        lab.customer_id,
                        lab.timestamp_text,
                        lab.is_fraud,
                        lab.available_text,
                    ),
                    strict=True,
                )
            )
            for _, _, lab in labels
        )
        self._labels.flush()
        for partition, offset, _ in labels:
            if offset + 1 > self.label_positions.get(partition, 0):
                self.label_positions[partition] = offset + 1
        self._save_positions()
        return n

    def flush(self) -> None:
        self._tx.flush()
        self._labels.flush()

    def close(self) -> None:
        self._tx.close()
        self._labels.close()
        if self._positions_log is not None:
            self._positions_log.close()
            self._positions_log = None

    def _load_positions(self) -> dict[int, int]:
        try:
            lines = self._positions_path.read_bytes().splitlines()
        except FileNotFoundError:
            return {}
        for number in range(len(lines), 0, -1):
            try:
                raw = json.loads(lines[number - 1])
                return {int(k): int(v) for k, v in raw.items()}
            except ValueError as err:
                if number != len(lines):
                    raise ValueError(
                        f"{self._positions_path}, line {number}: unreadable ({err}); remove it"
                    ) from err
                # Only the last line can be cut short (the process died while appending it).
        return {}

    def _save_positions(self) -> None:
        # Appended, not replaced: on ext4 a rename over an existing file forces the new file's
        # writeback, and doing that once per labels drain stalled scoring for up to ~270 ms.
        if self._positions_log is None:
            self._positions_path.parent.mkdir(parents=True, exist_ok=True)
            self._compact_positions()
            self._positions_log = open(self._positions_path, "ab")  # noqa: SIM115 - close()
        self._positions_log.write(self._positions_line())
        self._positions_log.flush()

    def _positions_line(self) -> bytes:
        return (
            json.dumps({str(k): v for k, v in sorted(self.label_positions.items())}).encode()
            + b"\n"
        )

    def _compact_positions(self) -> None:
        """Start each run's log from one line (the file would otherwise grow a line per drain
        for ever); a rename here, once per start, is no stall."""
        if not self._positions_path.exists():
            return
        tmp = self._positions_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(self._positions_line())
        os.replace(tmp, self._positions_path)


def _safe(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def load_consumed(state_dir: Path, labelled_only: bool = True) -> Any:
    """Transactions the consumer saw, joined with their labels, in the raw schema.

    Returns ``contract.RAW_FIELDS`` plus ``label_available_at``, deduplicated by transaction id,
    in stream order. Unlabelled transactions are dropped unless ``labelled_only`` is False (their
    label is then missing).
    """
    import pandas as pd

    from core.dataio import sort_stream_order

    root = Path(state_dir) / "dataset"
    tx = _read_parts(root / TRANSACTIONS_DIR, c.LIVE_FIELDS)
    labels = _read_parts(root / LABELS_DIR, LABEL_FIELDS)
    tx = tx.drop_duplicates(subset=[c.TRANSACTION_ID], keep="first")
    labels = labels.drop_duplicates(subset=[c.TRANSACTION_ID], keep="first")
    merged = tx.merge(
        labels[[c.TRANSACTION_ID, c.LABEL, c.LABEL_AVAILABLE_AT]],
        on=c.TRANSACTION_ID,
        how="inner" if labelled_only else "left",
    )
    for col in (c.TIMESTAMP, c.LABEL_AVAILABLE_AT):
        merged[col] = pd.to_datetime(merged[col], utc=True, format=c.TIMESTAMP_FORMAT)
    merged[c.AMOUNT] = merged[c.AMOUNT].astype("float64")
    if labelled_only:
        merged[c.LABEL] = merged[c.LABEL].astype("int8")
    return sort_stream_order(merged[[*c.RAW_FIELDS, c.LABEL_AVAILABLE_AT]])


def _read_parts(directory: Path, columns: Sequence[str]) -> Any:
    import pandas as pd

    records: list[dict[str, Any]] = []
    for path in sorted(directory.glob("part-*.jsonl")) if directory.exists() else []:
        with open(path, "rb") as f:
            for line in f:
                try:
                    obj = orjson.loads(line)
                except orjson.JSONDecodeError:
                    # A process killed mid-write leaves a truncated last line; that transaction
                    # was not committed, so the next run consumed and wrote it again.
                    continue
                if all(obj.get(col) is not None for col in columns):
                    records.append({col: obj[col] for col in columns})
    return pd.DataFrame.from_records(records, columns=list(columns))
