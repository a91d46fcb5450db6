"""Wire formats of the streaming topics (JSON values), in one place.

* transactions: the raw schema without the label (``contract.LIVE_FIELDS``), key = customer_id,
  timestamp in the canonical form;
* labels: transaction_id, terminal_id, customer_id, timestamp, is_fraud, label_available_at,
  key = terminal_id;
* decisions / alerts: ``DecisionFields`` below, key = transaction_id;
* dead letters: ``DeadLetterFields`` below, with the original bytes in base64.

Validation of transactions reuses ``components.dataio.validate_frame`` on each poll batch, so a
streamed transaction is accepted exactly when a row of a raw file would be.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from components import contract as c


class DecisionFields:
    """Keys of a decision (and alert) message besides the contract's transaction fields."""

    SCORE = "score"
    DECISION = "decision"
    MODEL_NAME = "model_name"
    MODEL_VERSION = "model_version"
    THRESHOLDS = "thresholds"
    DECIDED_AT = "decided_at"
    SCORING_MS = "scoring_ms"
    END_TO_END_MS = "end_to_end_ms"
    FEATURES = "features"  # only with --include-features (debugging, equality tests)
    # True: decided with the fallback decision after the decision deadline, without a score.
    FALLBACK = "fallback"
    # True: the re-score of a transaction decided earlier with the fallback decision; it
    # replaces that decision.
    CORRECTION = "correction"


class DeadLetterFields:
    REASON = "reason"
    REASON_KIND = "reason_kind"
    SOURCE_TOPIC = "source_topic"
    SOURCE_PARTITION = "source_partition"
    SOURCE_OFFSET = "source_offset"
    SOURCE_TIMESTAMP_MS = "source_timestamp_ms"
    KEY_B64 = "key_b64"
    VALUE_B64 = "value_b64"
    CONSUMER_GROUP = "consumer_group"
    DEAD_LETTERED_AT = "dead_lettered_at"


# Bounded set of reason kinds (a metric label); the free-text reason says the rest.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
INVALID_VALUE = "invalid_value"
MODEL_REJECTED = "model_rejected"
REASON_KINDS = (MALFORMED_JSON, NOT_AN_OBJECT, MISSING_FIELD, INVALID_VALUE, MODEL_REJECTED)

LABEL_FIELDS: tuple[str, ...] = (
    c.TRANSACTION_ID,
    c.TERMINAL_ID,
    c.CUSTOMER_ID,
    c.TIMESTAMP,
    c.LABEL,
    c.LABEL_AVAILABLE_AT,
)

# validate_frame numbers Parquet rows from 1 (see components.dataio): a pseudo Parquet path makes
# a batch's row numbers its 1-based positions.
_BATCH_PATH = Path("kafka-batch.parquet")


@dataclass(frozen=True)
class Rejected:
    kind: str
    reason: str


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def encode(payload: dict[str, Any]) -> bytes:
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def _json_object(value: bytes | None, empty: str) -> dict[str, Any] | Rejected:
    """A message value decoded as a JSON object, or why it is not one (``empty`` for null)."""
    if value is None:
        return Rejected(MALFORMED_JSON, empty)
    try:
        obj = orjson.loads(value)
    except orjson.JSONDecodeError as err:
        return Rejected(MALFORMED_JSON, f"malformed JSON: {err}")
    if not isinstance(obj, dict):
        return Rejected(NOT_AN_OBJECT, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_transaction(value: bytes | None) -> dict[str, Any] | Rejected:
    """Decode one transactions-topic value; structural problems are rejected here, value problems
    by ``validate_batch``."""
    obj = _json_object(value, "empty message (null value)")
    if isinstance(obj, Rejected):
        return obj
    missing = [f for f in c.LIVE_FIELDS if f not in obj or obj[f] is None]
    if missing:
        return Rejected(MISSING_FIELD, "missing field(s): " + ", ".join(missing))
    return obj


@dataclass
class Transaction:
    """A validated transaction: ``row`` in the raw schema (canonical timestamp text, float
    amount, string ids) and its event time in epoch seconds."""

    row: dict[str, Any]
    epoch: int


def validate_batch(
    rows: Sequence[dict[str, Any]],
) -> tuple[list[Transaction | None], dict[int, Rejected]]:
    """Validate parsed transactions with the raw-data rules of ``components.dataio``.

    Returns one ``Transaction`` (or None when rejected) per row, and {position: rejection}.
    Rows already in the canonical wire form (what the replay and any well-behaved producer
    send) are checked by a fast path that accepts a strict subset of what ``validate_frame``
    accepts; every other row is decided by ``validate_frame`` itself, so the verdicts and
    reasons are those of a raw file. Within a batch, the first valid occurrence of a
    transaction id wins and later ones are rejected as duplicates, as in a raw file.
    """
    out: list[Transaction | None] = [None] * len(rows)
    slow: list[int] = []
    for i, row in enumerate(rows):
        tx = _fast_path(row)
        if tx is None:
            slow.append(i)
        else:
            out[i] = tx
    rejected: dict[int, Rejected] = {}
    if slow:
        _validate_with_dataio(rows, slow, out, rejected)
    first_seen: dict[str, int] = {}
    for i, tx in enumerate(out):
        if tx is None:
            continue
        tid = tx.row[c.TRANSACTION_ID]
        if tid in first_seen:
            out[i] = None
            rejected[i] = Rejected(
                INVALID_VALUE,
                f"{c.TRANSACTION_ID}: duplicate id {tid!r} (first seen at row {first_seen[tid]})",
            )
        else:
            first_seen[tid] = i + 1
    return out, rejected


_CANONICAL_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_DAY_CACHE: dict[str, int] = {}  # 'YYYY-MM-DD' -> epoch seconds of its midnight (UTC)


def _fast_path(row: dict[str, Any]) -> Transaction | None:
    """The row if it is valid in the canonical form, else None (undecided, not rejected)."""
    for f in c.STRING_FIELDS:
        value = row[f]
        if type(value) is not str or not value.strip():
            return None
    amount = row[c.AMOUNT]
    if type(amount) not in (float, int) or not 0 <= amount < math.inf:
        return None
    try:
        epoch = _canonical_epoch(row[c.TIMESTAMP])
    except ValueError:
        return None  # e.g. month 13: let validate_frame word the rejection
    if epoch is None:
        return None
    return Transaction({f: row[f] for f in c.LIVE_FIELDS} | {c.AMOUNT: float(amount)}, epoch)


def _validate_with_dataio(
    rows: Sequence[dict[str, Any]],
    positions: list[int],
    out: list[Transaction | None],
    rejected: dict[int, Rejected],
) -> None:
    """Decide ``positions`` with ``validate_frame`` (one call per round of distinct ids, so its
    own duplicate rule never fires: duplicates are judged over the whole batch by the caller)."""
    import pandas as pd

    from components.dataio import format_timestamps, validate_frame
    from components.features.batch import epoch_seconds

    rounds: list[list[int]] = []
    for pos in positions:
        key = str(rows[pos][c.TRANSACTION_ID])
        for batch in rounds:
            if all(str(rows[p][c.TRANSACTION_ID]) != key for p in batch):
                batch.append(pos)
                break
        else:
            rounds.append([pos])
    for batch in rounds:
        frame = pd.DataFrame.from_records(
            [{f: rows[p][f] for f in c.LIVE_FIELDS} for p in batch], columns=list(c.LIVE_FIELDS)
        )
        frame["batch_index"] = batch
        clean, errors = validate_frame(frame, _BATCH_PATH, require_label=False)
        reasons: dict[int, list[str]] = {}
        for err in errors:
            reasons.setdefault(batch[err.row - 1], []).append(f"{err.field}: {err.reason}")
        for pos, why in reasons.items():
            rejected[pos] = Rejected(INVALID_VALUE, "; ".join(why))
        if len(clean):
            epochs = epoch_seconds(clean[c.TIMESTAMP]).tolist()
            texts = format_timestamps(clean[c.TIMESTAMP]).tolist()
            records = clean[list(c.LIVE_FIELDS)].to_dict("records")
            for k, pos in enumerate(clean["batch_index"].tolist()):
                row = records[k] | {c.TIMESTAMP: texts[k], c.AMOUNT: float(records[k][c.AMOUNT])}
                out[pos] = Transaction(row, int(epochs[k]))


def transaction_message(row: dict[str, Any]) -> bytes:
    """A transactions-topic value from a raw row (the label, if present, is left out)."""
    return encode({f: _plain(row[f]) for f in c.LIVE_FIELDS})


def label_message(row: dict[str, Any]) -> bytes:
    return encode({f: _plain(row[f]) for f in LABEL_FIELDS})


class Label(NamedTuple):
    """A label as the feature engine needs it (times in epoch seconds, texts as received).

    A NamedTuple because every transaction brings one: creation cost matters."""

    transaction_id: str
    terminal_id: str
    customer_id: str
    tx_ts: int
    is_fraud: int
    available_at: int
    timestamp_text: str
    available_text: str


def parse_label(value: bytes | None) -> Label | Rejected:
    obj = _json_object(value, "empty label message")
    if isinstance(obj, Rejected):
        return obj
    missing = [f for f in LABEL_FIELDS if obj.get(f) is None]
    if missing:
        return Rejected(MISSING_FIELD, "missing field(s): " + ", ".join(missing))
    ts_text, available_text = obj[c.TIMESTAMP], obj[c.LABEL_AVAILABLE_AT]
    try:
        # Canonical texts (one match each) are kept as they are, for the consumed dataset;
        # others are parsed in full and normalised.
        tx_ts = _canonical_epoch(ts_text)
        if tx_ts is None:
            tx_ts, ts_text = epoch_seconds(ts_text), None
        available = _canonical_epoch(available_text)
        if available is None:
            available, available_text = epoch_seconds(available_text), None
    except ValueError as err:
        return Rejected(INVALID_VALUE, str(err))
    fraud = obj[c.LABEL]
    if isinstance(fraud, bool) or fraud not in (0, 1):
        return Rejected(INVALID_VALUE, f"{c.LABEL} must be 0 or 1, got {fraud!r}")
    return Label(
        str(obj[c.TRANSACTION_ID]),
        str(obj[c.TERMINAL_ID]),
        str(obj[c.CUSTOMER_ID]),
        tx_ts,
        int(fraud),
        available,
        iso_from_epoch(tx_ts) if ts_text is None else ts_text,
        iso_from_epoch(available) if available_text is None else available_text,
    )


def epoch_seconds(text: str) -> int:
    """Seconds since the epoch of an ISO-8601 time (no zone = UTC), floored to the second."""
    canonical = _canonical_epoch(text)
    if canonical is not None:
        return canonical
    if not isinstance(text, str):
        raise ValueError(f"timestamp must be an ISO-8601 string, got {text!r}")
    try:
        ts = datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError(f"unparsable timestamp {text!r}") from err
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return math.floor(ts.timestamp())


def _canonical_epoch(text: Any) -> int | None:
    """Epoch seconds of a text in the canonical form (what the replay sends), None for any other
    value; raises ValueError for a canonical-looking text that is no time (month 13)."""
    if type(text) is not str or len(text) != 20 or not _CANONICAL_TS.fullmatch(text):
        return None
    # Days from a small cache plus the time of day: ~4x faster than datetime parsing.
    day = _DAY_CACHE.get(text[:10])
    if day is None:
        try:
            day = _DAY_CACHE[text[:10]] = int(
                datetime.fromisoformat(text[:10] + "T00:00:00+00:00").timestamp()
            )
        except ValueError as err:
            raise ValueError(f"unparsable timestamp {text!r}") from err
    hh, mm, ss = int(text[11:13]), int(text[14:16]), int(text[17:19])
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"unparsable timestamp {text!r}")
    return day + hh * 3600 + mm * 60 + ss


def iso_from_epoch(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime(c.TIMESTAMP_FORMAT)


def dead_letter(
    rejected: Rejected,
    *,
    topic: str,
    partition: int,
    offset: int,
    timestamp_ms: int | None,
    key: bytes | None,
    value: bytes | None,
    group_id: str,
) -> bytes:
    f = DeadLetterFields
    return encode(
        {
            f.REASON: rejected.reason,
            f.REASON_KIND: rejected.kind,
            f.SOURCE_TOPIC: topic,
            f.SOURCE_PARTITION: partition,
            f.SOURCE_OFFSET: offset,
            f.SOURCE_TIMESTAMP_MS: timestamp_ms,
            f.KEY_B64: None if key is None else base64.b64encode(key).decode("ascii"),
            f.VALUE_B64: None if value is None else base64.b64encode(value).decode("ascii"),
            f.CONSUMER_GROUP: group_id,
            f.DEAD_LETTERED_AT: now_iso(),
        }
    )


def _plain(value: Any) -> Any:
    """JSON-ready scalar: timestamps in the canonical form, numpy scalars as Python ones."""
    import pandas as pd

    if isinstance(value, pd.Timestamp | datetime):
        ts = pd.Timestamp(value)
        ts = ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
        return ts.strftime(c.TIMESTAMP_FORMAT)
    if hasattr(value, "item"):
        return value.item()
    return value
