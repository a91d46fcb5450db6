"""Wire formats of the streaming topics (JSON values), in one place.

* transactions: the raw schema without the label (``contract.LIVE_FIELDS``), key = customer_id,
  timestamp in the canonical form;
* labels: transaction_id, terminal_id, customer_id, timestamp, is_fraud, label_available_at,
  key = terminal_id;
* decisions / alerts: ``DecisionFields`` below, key = transaction_id;
* dead letters: ``DeadLetterFields`` below, with the original bytes in base64 up to a cap
  (``DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES``), their full size and sha256.

Validation of transactions reuses ``core.dataio.validate_frame`` on each poll batch, so a
streamed transaction is accepted exactly when a row of a raw file would be (within the same
bounds: ``contract.MAX_AMOUNT``, ``contract.MIN_TIMESTAMP``..``contract.MAX_TIMESTAMP``).
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson

from core import contract as c

if TYPE_CHECKING:
    from core.dataio import RowError


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


class ShadowFields:
    """Keys of a shadow-scores message: one per shadow-scored batch, the lists aligned."""

    STABLE_VERSION = "stable_version"
    CANARY_VERSION = "canary_version"
    TRANSACTION_IDS = "transaction_ids"
    STABLE_SCORES = "stable_scores"
    CANARY_SCORES = "canary_scores"
    STABLE_DECISIONS = "stable_decisions"
    CANARY_DECISIONS = "canary_decisions"
    CANARY_MS = "canary_ms"
    SHADOWED_AT = "shadowed_at"


class DeadLetterFields:
    REASON = "reason"
    REASON_KIND = "reason_kind"
    SOURCE_TOPIC = "source_topic"
    SOURCE_PARTITION = "source_partition"
    SOURCE_OFFSET = "source_offset"
    SOURCE_TIMESTAMP_MS = "source_timestamp_ms"
    # The original key and value: base64 of at most the first ``max_payload_bytes`` bytes, the
    # full size, the sha256 of all of it (hex) and whether the base64 holds less than that.
    # All None (truncated False) for a null key or value.
    KEY_B64 = "key_b64"
    KEY_SIZE = "key_size"
    KEY_SHA256 = "key_sha256"
    KEY_TRUNCATED = "key_truncated"
    VALUE_B64 = "value_b64"
    VALUE_SIZE = "value_size"
    VALUE_SHA256 = "value_sha256"
    VALUE_TRUNCATED = "value_truncated"
    CONSUMER_GROUP = "consumer_group"
    DEAD_LETTERED_AT = "dead_lettered_at"


# Bounded set of reason kinds (a metric label); the free-text reason says the rest.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
INVALID_VALUE = "invalid_value"
# An event time outside the contract's range, or too far ahead of its partition's event time.
TIMESTAMP_OUT_OF_RANGE = "timestamp_out_of_range"
# Key plus value above the consumer's maximum: dead-lettered without being decoded.
MESSAGE_TOO_LARGE = "message_too_large"
DUPLICATE_TRANSACTION_ID = "duplicate_transaction_id"
MODEL_REJECTED = "model_rejected"
REASON_KINDS = (
    MALFORMED_JSON,
    NOT_AN_OBJECT,
    MISSING_FIELD,
    INVALID_VALUE,
    TIMESTAMP_OUT_OF_RANGE,
    MESSAGE_TOO_LARGE,
    DUPLICATE_TRANSACTION_ID,
    MODEL_REJECTED,
)

# Largest transactions-topic message (key plus value bytes) the consumer decodes. Apache Kafka's
# default message.max.bytes is ~1 MB; a transaction is a few hundred bytes.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
# Bytes of the original key and of the value a dead letter carries. Base64 makes 64 KiB into
# ~87 KiB, so a dead letter with both stays far below the 1 MB a broker accepts by default; a
# message that large is not a transaction anyway, and its sha256 identifies it in full.
DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES = 64 * 1024
# A reason quotes the offending value: bounded too, or a huge field would make a huge reason.
MAX_REASON_CHARS = 1000

LABEL_FIELDS: tuple[str, ...] = (
    c.TRANSACTION_ID,
    c.TERMINAL_ID,
    c.CUSTOMER_ID,
    c.TIMESTAMP,
    c.LABEL,
    c.LABEL_AVAILABLE_AT,
)

# validate_frame numbers Parquet rows from 1 (see core.dataio): a pseudo Parquet path makes
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
    rows: Sequence[dict[str, Any]], dedupe: bool = True
) -> tuple[list[Transaction | None], dict[int, Rejected]]:
    """Validate parsed transactions with the raw-data rules of ``core.dataio``.

    Returns one ``Transaction`` (or None when rejected) per row, and {position: rejection}.
    Rows already in the canonical wire form (what the replay and any well-behaved producer
    send) are checked by a fast path that accepts a strict subset of what ``validate_frame``
    accepts; every other row is decided by ``validate_frame`` itself, so the verdicts and
    reasons are those of a raw file. With ``dedupe``, the first valid occurrence of a
    transaction id within the batch wins and later ones are rejected as duplicates, as in a raw
    file (the scoring consumer judges repeats itself, across batches, see
    streaming.state.RecentIds).
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
    if dedupe:
        _reject_repeated_ids(out, rejected)
    return out, rejected


def _reject_repeated_ids(out: list[Transaction | None], rejected: dict[int, Rejected]) -> None:
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


_CANONICAL_TS = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_DAY_CACHE: dict[str, int] = {}  # 'YYYY-MM-DD' -> epoch seconds of its midnight (UTC)


def _fast_path(row: dict[str, Any]) -> Transaction | None:
    """The row if it is valid in the canonical form, else None (undecided, not rejected)."""
    for f in c.STRING_FIELDS:
        value = row[f]
        if type(value) is not str or not value.strip() or len(value) > c.MAX_ID_CHARS:
            return None
    amount = row[c.AMOUNT]
    if type(amount) not in (float, int) or not 0 <= amount <= c.MAX_AMOUNT:
        return None
    try:
        epoch = _canonical_epoch(row[c.TIMESTAMP])
    except ValueError:
        return None  # e.g. month 13: let validate_frame word the rejection
    if epoch is None or not c.MIN_TIMESTAMP <= epoch < c.MAX_TIMESTAMP:
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

    from core.dataio import format_timestamps, validate_frame
    from core.features.batch import epoch_seconds

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
        by_position: dict[int, list[RowError]] = {}
        for err in errors:
            by_position.setdefault(batch[err.row - 1], []).append(err)
        for pos, errs in by_position.items():
            rejected[pos] = _rejection(errs)
        if len(clean):
            epochs = epoch_seconds(clean[c.TIMESTAMP]).tolist()
            texts = format_timestamps(clean[c.TIMESTAMP]).tolist()
            records = clean[list(c.LIVE_FIELDS)].to_dict("records")
            for k, pos in enumerate(clean["batch_index"].tolist()):
                row = records[k] | {c.TIMESTAMP: texts[k], c.AMOUNT: float(records[k][c.AMOUNT])}
                out[pos] = Transaction(row, int(epochs[k]))


def _rejection(errors: list[RowError]) -> Rejected:
    """One row's ``validate_frame`` errors as a rejection: an event time out of range is its own
    kind when it is the row's only problem."""
    time_only = all(e.field == c.TIMESTAMP and e.out_of_range for e in errors)
    return Rejected(
        TIMESTAMP_OUT_OF_RANGE if time_only else INVALID_VALUE,
        "; ".join(f"{e.field}: {e.reason}" for e in errors),
    )


def oversized(key: bytes | None, value: bytes | None, max_bytes: int) -> Rejected | None:
    """The rejection of a message whose key plus value exceed ``max_bytes``, else None."""
    size = len(key or b"") + len(value or b"")
    if size <= max_bytes:
        return None
    return Rejected(
        MESSAGE_TOO_LARGE,
        f"message of {size:,} bytes (key and value) is above the maximum of {max_bytes:,} "
        "bytes (--max-message-bytes); not decoded",
    )


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
            day = int(datetime.fromisoformat(text[:10] + "T00:00:00+00:00").timestamp())
        except ValueError as err:
            raise ValueError(f"unparsable timestamp {text!r}") from err
        if c.MIN_TIMESTAMP <= day < c.MAX_TIMESTAMP:  # bounds the cache to the valid days
            _DAY_CACHE[text[:10]] = day
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
    max_payload_bytes: int = DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES,
) -> bytes:
    """A dead-letter value: why, where from, and the original key and value (see
    ``DeadLetterFields``), each cut to ``max_payload_bytes`` (0: sizes and hashes only)."""
    f = DeadLetterFields
    reason = rejected.reason
    if len(reason) > MAX_REASON_CHARS:
        reason = f"{reason[:MAX_REASON_CHARS]}... ({len(reason):,} characters)"
    return encode(
        {
            f.REASON: reason,
            f.REASON_KIND: rejected.kind,
            f.SOURCE_TOPIC: topic,
            f.SOURCE_PARTITION: partition,
            f.SOURCE_OFFSET: offset,
            f.SOURCE_TIMESTAMP_MS: timestamp_ms,
            **_payload_fields(key, max_payload_bytes, f.KEY_B64, f.KEY_SIZE, f.KEY_SHA256),
            **_payload_fields(value, max_payload_bytes, f.VALUE_B64, f.VALUE_SIZE, f.VALUE_SHA256),
            f.KEY_TRUNCATED: key is not None and len(key) > max_payload_bytes,
            f.VALUE_TRUNCATED: value is not None and len(value) > max_payload_bytes,
            f.CONSUMER_GROUP: group_id,
            f.DEAD_LETTERED_AT: now_iso(),
        }
    )


def _payload_fields(
    data: bytes | None, max_bytes: int, b64: str, size: str, sha256: str
) -> dict[str, Any]:
    if data is None:
        return {b64: None, size: None, sha256: None}
    return {
        b64: base64.b64encode(data[:max_bytes]).decode("ascii"),
        size: len(data),
        sha256: hashlib.sha256(data).hexdigest(),
    }


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
