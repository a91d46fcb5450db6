"""Bounds of the feature contract, the event-time skew rule and bounded dead letters.

* the stream's validation (fast path, else ``validate_frame``) and ``validate_frame`` agree on
  every boundary value of amounts and timestamps;
* on the real broker and model server: out-of-range timestamps and amounts are dead-lettered and
  leave every other transaction's features equal to one uninterrupted streaming engine's; a
  6.5 MB message is dead-lettered with a bounded payload and the consumer goes on; the skew rule
  dead-letters exactly the transactions it should, re-reading for state included.
"""

from __future__ import annotations

import base64
import hashlib
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from stream_fixtures import (
    LABEL_DELAY_DAYS,
    consume,
    decision_features,
    make_topics,
    outputs_of,
    read_topic,
    reference_stream_features,
    simulated,
)

from core import contract as c
from core.dataio import format_timestamps, validate_frame
from core.features.batch import epoch_seconds as batch_epoch_seconds
from core.features.stream import StreamingFeatureEngine
from streaming import messages as m
from streaming.consumer import ConsumerConfig
from streaming.messages import DeadLetterFields as F

DAY = c.SECONDS_PER_DAY
OK, RANGE, INVALID = "ok", "range", "invalid"


def _tx(tid: str, ts: Any = "2025-03-01T10:00:00Z", amount: Any = 12.5, **more: Any) -> dict:
    return {
        c.TRANSACTION_ID: tid,
        c.TIMESTAMP: ts,
        c.CUSTOMER_ID: more.get("customer", "C1"),
        c.TERMINAL_ID: more.get("terminal", "M1"),
        c.AMOUNT: amount,
    }


# --- one rule for batch and stream ------------------------------------------------------------

AMOUNTS: list[tuple[Any, str]] = [
    (-0.0, OK),
    (0, OK),
    (5e-324, OK),
    (7, OK),
    (c.MAX_AMOUNT, OK),
    (int(c.MAX_AMOUNT), OK),
    (float(np.nextafter(c.MAX_AMOUNT, math.inf)), INVALID),
    (int(c.MAX_AMOUNT) + 1, INVALID),
    (1e39, INVALID),
    (1e308, INVALID),
    (10**30, INVALID),
    (2**64 - 1, INVALID),
    (math.inf, INVALID),
    (-math.inf, INVALID),
    (math.nan, INVALID),
    (-1e-300, INVALID),
    ("12.5", OK),
    ("1e39", INVALID),
    ("abc", INVALID),
    ("", INVALID),
    (True, INVALID),
    (False, INVALID),
]

TIMESTAMPS: list[tuple[Any, str, str | None]] = [
    ("1999-12-31T23:59:59Z", RANGE, None),
    (c.MIN_TIMESTAMP_TEXT, OK, c.MIN_TIMESTAMP_TEXT),
    ("2099-12-31T23:59:59Z", OK, "2099-12-31T23:59:59Z"),
    (c.MAX_TIMESTAMP_TEXT, RANGE, None),
    ("0001-01-01T00:00:00Z", RANGE, None),
    ("9999-12-31T23:59:59Z", RANGE, None),
    ("2300-01-01T00:00:00Z", RANGE, None),
    ("2300-01-01", RANGE, None),
    ("9999-12-31T23:59:59-05:00", RANGE, None),
    ("0001-01-01T00:00:00+05:00", RANGE, None),
    ("2099-12-31T23:30:00-01:00", RANGE, None),  # 2100-01-01T00:30:00Z
    ("1999-12-31T23:30:00-01:00", OK, "2000-01-01T00:30:00Z"),
    ("1999-12-31T23:59:59.9Z", RANGE, None),  # floored to the second: before the minimum
    ("2099-12-31T23:59:59.999Z", OK, "2099-12-31T23:59:59Z"),
    ("2025-13-01T00:00:00Z", INVALID, None),
    ("2025-02-30T10:00:00Z", INVALID, None),
    ("2025-01-05T24:00:00Z", INVALID, None),
    ("2025-01-05 10:00:00", OK, "2025-01-05T10:00:00Z"),
    ("2025-01-05T10:00:00.9Z", OK, "2025-01-05T10:00:00Z"),
    ("2025-01-05T11:00:00+01:00", OK, "2025-01-05T10:00:00Z"),
    ("2025-01-05", OK, "2025-01-05T00:00:00Z"),
    ("2025-1-5T10:00:00Z", INVALID, None),
    ("yesterday", INVALID, None),
    ("", INVALID, None),
    (1736071200, INVALID, None),
]


@dataclass
class Verdict:
    accepted: bool
    row: dict[str, Any] | None = None
    epoch: int | None = None
    kind: str | None = None


def _stream_verdicts(rows: list[dict]) -> list[Verdict]:
    valid, rejected = m.validate_batch(rows)
    out = []
    for i, tx in enumerate(valid):
        if tx is None:
            out.append(Verdict(False, kind=rejected[i].kind))
        else:
            out.append(Verdict(True, tx.row, tx.epoch))
    return out


def _frame_verdicts(rows: list[dict]) -> list[Verdict]:
    frame = pd.DataFrame.from_records(rows, columns=list(c.LIVE_FIELDS))
    frame["position"] = range(len(rows))
    clean, _ = validate_frame(frame, Path("x.parquet"), require_label=False)
    out = [Verdict(False) for _ in rows]
    texts = format_timestamps(clean[c.TIMESTAMP]).tolist()
    epochs = batch_epoch_seconds(clean[c.TIMESTAMP]).tolist()
    for k, record in enumerate(clean[[*c.LIVE_FIELDS, "position"]].to_dict("records")):
        row = {f: record[f] for f in c.LIVE_FIELDS} | {c.TIMESTAMP: texts[k]}
        out[record["position"]] = Verdict(True, row, int(epochs[k]))
    return out


def _assert_same(stream: Verdict, frame: Verdict, what: str) -> None:
    assert stream.accepted == frame.accepted, what
    if stream.accepted:
        assert stream.row == frame.row, what
        assert type(stream.row[c.AMOUNT]) is float, what  # type: ignore[index]
        assert stream.epoch == frame.epoch, what


IDS: list[tuple[Any, str]] = [
    ("x" * c.MAX_ID_CHARS, OK),
    ("x" * (c.MAX_ID_CHARS + 1), INVALID),
    ("é" * c.MAX_ID_CHARS, OK),  # characters, not bytes
    (" " * (c.MAX_ID_CHARS + 1), INVALID),
    ("  T1  ", OK),
]


@pytest.mark.parametrize("field", [c.TRANSACTION_ID, c.CUSTOMER_ID, c.TERMINAL_ID])
def test_stream_and_validate_frame_agree_on_id_lengths(field: str) -> None:
    rows = [_tx(f"T{i}") | {field: value} for i, (value, _) in enumerate(IDS)]
    together_stream, together_frame = _stream_verdicts(rows), _frame_verdicts(rows)
    for i, (value, expect) in enumerate(IDS):
        what = f"{field} of {len(value)} characters"
        alone_stream, alone_frame = _stream_verdicts([rows[i]])[0], _frame_verdicts([rows[i]])[0]
        for stream in (alone_stream, together_stream[i]):
            for frame in (alone_frame, together_frame[i]):
                _assert_same(stream, frame, what)
        assert alone_stream.accepted == (expect == OK), what
        if expect != OK:
            assert alone_stream.kind == m.INVALID_VALUE, what


@pytest.mark.parametrize("field", [c.AMOUNT, c.TIMESTAMP])
def test_stream_and_validate_frame_agree_on_the_bounds(field: str) -> None:
    """Each boundary value alone and all of them in one batch: the stream accepts exactly what
    validate_frame accepts, normalised alike, and rejects with the expected reason kind."""
    if field == c.AMOUNT:
        table = [(value, expect, None) for value, expect in AMOUNTS]
        rows = [_tx(f"T{i}", amount=value) for i, (value, _, _) in enumerate(table)]
    else:
        table = TIMESTAMPS
        rows = [_tx(f"T{i}", ts=value) for i, (value, _, _) in enumerate(table)]
    together_stream, together_frame = _stream_verdicts(rows), _frame_verdicts(rows)
    for i, (value, expect, canonical) in enumerate(table):
        what = f"{field} {value!r}"
        alone_stream, alone_frame = _stream_verdicts([rows[i]])[0], _frame_verdicts([rows[i]])[0]
        for stream in (alone_stream, together_stream[i]):
            for frame in (alone_frame, together_frame[i]):
                _assert_same(stream, frame, what)
        assert alone_stream.accepted == (expect == OK), what
        if expect == OK:
            if canonical is not None:
                assert alone_stream.row[c.TIMESTAMP] == canonical, what  # type: ignore[index]
                assert alone_stream.epoch == m.epoch_seconds(canonical), what
            else:
                assert alone_stream.row[c.AMOUNT] == float(value), what  # type: ignore[index]
        else:
            kind = m.TIMESTAMP_OUT_OF_RANGE if expect == RANGE else m.INVALID_VALUE
            assert alone_stream.kind == together_stream[i].kind == kind, what


def test_validate_frame_names_the_bound() -> None:
    frame = pd.DataFrame.from_records(
        [_tx("T1", amount=1e39), _tx("T2", ts="9999-12-31T23:59:59Z")],
        columns=list(c.LIVE_FIELDS),
    )
    _, errors = validate_frame(frame, Path("x.parquet"), require_label=False)
    assert [(e.field, e.out_of_range) for e in errors] == [(c.AMOUNT, True), (c.TIMESTAMP, True)]
    assert "1e+39 above the maximum 1,000,000,000" in errors[0].reason
    assert c.MIN_TIMESTAMP_TEXT in errors[1].reason and c.MAX_TIMESTAMP_TEXT in errors[1].reason


def test_contract_bounds_are_consistent() -> None:
    assert m.epoch_seconds(c.MIN_TIMESTAMP_TEXT) == c.MIN_TIMESTAMP
    assert m.epoch_seconds(c.MAX_TIMESTAMP_TEXT) == c.MAX_TIMESTAMP
    # The model's float32 input holds the largest amount to ~1e-7 relative.
    assert abs(float(np.float32(c.MAX_AMOUNT)) - c.MAX_AMOUNT) / c.MAX_AMOUNT < 1e-7


def test_dead_letter_payload_is_bounded_with_size_and_hash() -> None:
    value, key = b"v" * 1000, b"k" * 10
    out = orjson.loads(
        m.dead_letter(
            m.Rejected(m.MALFORMED_JSON, "x" * 5000),
            topic="tx",
            partition=0,
            offset=7,
            timestamp_ms=1,
            key=key,
            value=value,
            group_id="g",
            max_payload_bytes=100,
        )
    )
    assert base64.b64decode(out[F.VALUE_B64]) == value[:100]
    assert (out[F.VALUE_SIZE], out[F.VALUE_TRUNCATED]) == (1000, True)
    assert out[F.VALUE_SHA256] == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(out[F.KEY_B64]) == key
    assert (out[F.KEY_SIZE], out[F.KEY_TRUNCATED]) == (10, False)
    assert out[F.KEY_SHA256] == hashlib.sha256(key).hexdigest()
    assert len(out[F.REASON]) < m.MAX_REASON_CHARS + 50 and "5,000 characters" in out[F.REASON]
    assert m.oversized(key, value, 1010) is None
    assert m.oversized(key, value, 1009).kind == m.MESSAGE_TOO_LARGE  # type: ignore[union-attr]
    for kind in ("timestamp_out_of_range", "message_too_large", "duplicate_transaction_id"):
        assert kind in m.REASON_KINDS
    assert "model_rejected" in m.REASON_KINDS


def test_consumer_config_rejects_meaningless_bounds() -> None:
    for bad in (
        {"max_event_time_skew_s": 0},
        {"max_message_bytes": 0},
        {"dead_letter_max_payload_bytes": -1},
    ):
        with pytest.raises(ValueError, match="consumer: "):
            ConsumerConfig("localhost:9092", **bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("seconds", [0.0, -1.0, float("nan")])
def test_a_decision_deadline_that_leaves_the_model_call_no_time_is_refused(seconds: float) -> None:
    import argparse

    from app.consume_options import add_consume_arguments

    with pytest.raises(ValueError, match=r"decision deadline must be > 0 s .* got"):
        ConsumerConfig("localhost:9092", decision_deadline_s=seconds)
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_consume_arguments(parser)
    with pytest.raises(argparse.ArgumentError, match="a deadline must be > 0 s"):
        parser.parse_args(["--decision-deadline-seconds", str(seconds)])
    assert (
        parser.parse_args(["--decision-deadline-seconds", "off"]).decision_deadline_seconds is None
    )


# --- through the broker and the model server ---------------------------------------------------


def _produce(bootstrap: str, topic: str, messages: list[tuple[bytes, bytes, int | None]]) -> None:
    """Send (key, value, record timestamp ms or None for now) in order, acknowledged."""
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=16 * 1024 * 1024)
    try:
        for key, value, timestamp_ms in messages:
            producer.send(topic, key=key, value=value, timestamp_ms=timestamp_ms).get(timeout=30)
    finally:
        producer.close()


def _partition_of(customer: str, partitions: int = 3) -> int:
    """Kafka's default partition of a customer's transactions (murmur2 of the key)."""
    from kafka.partitioner.default import murmur2

    return (murmur2(customer.encode()) & 0x7FFFFFFF) % partitions


def _dead_by_id(dead: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    out = {}
    for d in dead:
        original = orjson.loads(base64.b64decode(d["value"][F.VALUE_B64]))
        out[original[c.TRANSACTION_ID]] = d["value"]
    return out


@dataclass
class Poisoned:
    df: pd.DataFrame
    bad: dict[str, str]  # transaction id -> expected reason kind
    summary: Any
    decisions: list[dict[str, Any]]
    dead: dict[str, dict[str, Any]]


@pytest.fixture(scope="module")
def poisoned(broker, model_server, model_base, tmp_path_factory) -> Poisoned:
    """A simulated stream with bad transactions in the middle, for customers of every partition:
    year 9999 and year 1 timestamps, one 60 days ahead (in range, but far past the skew), an
    amount of 1e39 and two of 1e308."""
    from streaming.replay import replay_frame

    bootstrap = broker.bootstrap_servers
    df = simulated(60, 20, seed=5)
    split = len(df) // 2
    first, second = df.iloc[:split], df.iloc[split:]
    topics = make_topics(bootstrap)
    replay_frame(first, bootstrap, topics, progress=False, trailing_labels=False)
    now = first[c.TIMESTAMP].max()
    now_text = now.strftime(c.TIMESTAMP_FORMAT)
    ahead_text = (now + pd.Timedelta(days=60)).strftime(c.TIMESTAMP_FORMAT)
    by_partition: dict[int, str] = {}
    for customer in first[c.CUSTOMER_ID]:
        by_partition.setdefault(_partition_of(customer), customer)
    assert len(by_partition) == 3
    bad: dict[str, tuple[dict, str]] = {}
    for p, customer in sorted(by_partition.items()):
        bad[f"BAD-9999-{p}"] = (
            _tx(f"BAD-9999-{p}", "9999-12-31T23:59:59Z", customer=customer),
            m.TIMESTAMP_OUT_OF_RANGE,
        )
        bad[f"BAD-AHEAD-{p}"] = (
            _tx(f"BAD-AHEAD-{p}", ahead_text, customer=customer),
            m.TIMESTAMP_OUT_OF_RANGE,
        )
    c0 = by_partition[0]
    bad["BAD-0001"] = (
        _tx("BAD-0001", "0001-01-01T00:00:00Z", customer=c0),
        m.TIMESTAMP_OUT_OF_RANGE,
    )
    bad["BAD-1E39"] = (_tx("BAD-1E39", now_text, 1e39, customer=c0), m.INVALID_VALUE)
    for i in range(2):
        bad[f"BAD-1E308-{i}"] = (
            _tx(f"BAD-1E308-{i}", now_text, 1e308, customer=c0),
            m.INVALID_VALUE,
        )
    _produce(
        bootstrap,
        topics.transactions,
        [(row[c.CUSTOMER_ID].encode(), orjson.dumps(row), None) for row, _ in bad.values()],
    )
    replay_frame(second, bootstrap, topics, progress=False, prior=first)
    summary = consume(bootstrap, topics, model_server, model_base, tmp_path_factory.mktemp("p"))
    decisions = read_topic(bootstrap, topics.decisions, expect=len(df))
    dead = read_topic(bootstrap, topics.dead_letter, expect=len(bad))
    return Poisoned(
        df, {tid: kind for tid, (_, kind) in bad.items()}, summary, decisions, _dead_by_id(dead)
    )


@pytest.mark.slow
def test_out_of_range_transactions_are_dead_lettered(poisoned: Poisoned) -> None:
    assert len(poisoned.dead) == len(poisoned.bad)
    assert {tid: d[F.REASON_KIND] for tid, d in poisoned.dead.items()} == poisoned.bad
    assert "9999-12-31T23:59:59Z" in poisoned.dead["BAD-9999-0"][F.REASON]
    assert "--max-event-time-skew" in poisoned.dead["BAD-AHEAD-0"][F.REASON]
    assert "above the maximum" in poisoned.dead["BAD-1E308-1"][F.REASON]
    assert poisoned.summary.dead_lettered == len(poisoned.bad)


@pytest.mark.slow
def test_the_windows_survive_bad_transactions(poisoned: Poisoned) -> None:
    """Every good transaction is decided once, with the features of one uninterrupted engine
    that never saw the bad ones: no window was emptied, no mean became inf."""
    ids = [d["value"][c.TRANSACTION_ID] for d in poisoned.decisions]
    assert sorted(ids) == sorted(poisoned.df[c.TRANSACTION_ID])
    online = decision_features(poisoned.decisions)
    reference = reference_stream_features(poisoned.df)
    assert np.isfinite(online.to_numpy()).all()
    pd.testing.assert_frame_equal(online.loc[reference.index], reference)
    assert (online[c.terminal_count("30d")] > 0).mean() > 0.5  # labels did arrive


@pytest.mark.slow
def test_an_oversized_message_is_dead_lettered_bounded_and_the_consumer_goes_on(
    broker,
    model_server,
    model_base,
    tmp_path,
) -> None:
    bootstrap = broker.bootstrap_servers
    topics = make_topics(bootstrap, partitions=1)
    big = b'{"transaction_id": "T-big", "pad": "' + b"x" * 6_500_000  # malformed: unterminated
    padded = orjson.dumps(
        _tx("T-padded", "2025-01-05T10:00:01Z") | {"pad": "y" * 1_500_000}
    )  # a valid transaction in a 1.5 MB message
    _produce(
        bootstrap,
        topics.transactions,
        [
            (b"C1", orjson.dumps(_tx("T-before", "2025-01-05T10:00:00Z")), None),
            (b"C1", big, None),
            (b"C1", padded, None),
            (b"C1", orjson.dumps(_tx("T-after", "2025-01-05T10:00:02Z")), None),
        ],
    )

    def run(suffix: str, **overrides: Any) -> tuple[list[str], list[dict[str, Any]]]:
        out = outputs_of(topics, suffix, bootstrap, partitions=1)
        summary = consume(
            bootstrap,
            out,
            model_server,
            model_base,
            tmp_path / suffix,
            group_id=suffix,
            **overrides,
        )
        decisions = read_topic(bootstrap, out.decisions, expect=summary.decided)
        dead = read_topic(bootstrap, out.dead_letter, expect=summary.dead_lettered)
        assert (summary.consumed, len(dead)) == (4, summary.dead_lettered)
        return [d["value"][c.TRANSACTION_ID] for d in decisions], [d["value"] for d in dead]

    cap = ConsumerConfig.dead_letter_max_payload_bytes
    # Decoded (the maximum raised): malformed JSON, dead-lettered with its first 64 KiB.
    decided, dead = run("decoded", max_message_bytes=8 * 1024 * 1024)
    assert decided == ["T-before", "T-padded", "T-after"]
    [letter] = dead
    assert (letter[F.REASON_KIND], letter[F.SOURCE_OFFSET]) == (m.MALFORMED_JSON, 1)
    assert base64.b64decode(letter[F.VALUE_B64]) == big[:cap]
    assert (letter[F.VALUE_SIZE], letter[F.VALUE_TRUNCATED]) == (len(big), True)
    assert letter[F.VALUE_SHA256] == hashlib.sha256(big).hexdigest()
    assert base64.b64decode(letter[F.KEY_B64]) == b"C1" and not letter[F.KEY_TRUNCATED]

    # The default maximum (1 MiB): both large messages, valid or not, are not even decoded.
    decided, dead = run("default")
    assert decided == ["T-before", "T-after"]
    assert [(d[F.SOURCE_OFFSET], d[F.REASON_KIND]) for d in dead] == [
        (1, m.MESSAGE_TOO_LARGE),
        (2, m.MESSAGE_TOO_LARGE),
    ]
    assert dead[1][F.VALUE_SIZE] == len(padded) and dead[1][F.VALUE_TRUNCATED]
    assert "not decoded" in dead[0][F.REASON]

    # A payload cap the producer cannot send (8.7 MB of base64): the dead letter goes out
    # without the original bytes instead of stopping the consumer.
    decided, dead = run(
        "bare", max_message_bytes=8 * 1024 * 1024, dead_letter_max_payload_bytes=16 * 1024 * 1024
    )
    assert decided == ["T-before", "T-padded", "T-after"]
    [letter] = dead
    assert (letter[F.REASON_KIND], letter[F.SOURCE_OFFSET]) == (m.MALFORMED_JSON, 1)
    assert (letter[F.VALUE_B64], letter[F.KEY_B64]) == ("", "")
    assert (letter[F.VALUE_SIZE], letter[F.VALUE_TRUNCATED]) == (len(big), True)
    assert letter[F.VALUE_SHA256] == hashlib.sha256(big).hexdigest()
    assert letter[F.REASON].startswith("original bytes left out")
    assert "MessageSizeTooLargeError" in letter[F.REASON]


# (event time from T0, record timestamp from L0) in seconds, per offset; None = the wall clock
# plus a year (a forged future record timestamp). Expected: dead-lettered offsets.
T0 = m.epoch_seconds("2025-01-01T00:00:00Z")
SKEW_STREAM: list[tuple[int, int | None]] = [
    (0, 0),  # 0: first of the partition: only the static range applies
    (3_600, 0),  # 1
    (3_600 + DAY + 1, 0),  # 2: 1 s beyond the skew -> dead
    (3_600 + DAY, 0),  # 3: exactly the skew
    (3_600 + 4 * DAY + 1, 2 * DAY),  # 4: the log clock moved 2 days: limit 3 days, 1 s over -> dead
    (3_600 + 4 * DAY, 2 * DAY),  # 5: exactly skew + log clock
    (3_600 + DAY, 5 * DAY),  # 6: late (behind the event time): neither moves it nor its log time
    (3_600 + 8 * DAY, 5 * DAY),  # 7: 4 days ahead, limit 1 + (5 - 2) days: 6 did not reset it
    (3_600 + 39 * DAY, None),  # 8: forged record time counts only up to the wall clock -> dead
    (3_600 + 8 * DAY + 3_600, 5 * DAY),  # 9
]
SKEW_DEAD = {2, 4, 8}
SKEW_NEXT = (3_600 + 8 * DAY + 7_200, 5 * DAY)  # 10: after the restart


def _skew_messages(stream: list[tuple[int, int | None]], start: int, l0_ms: int) -> list:
    out = []
    for i, (event, log_s) in enumerate(stream, start):
        row = _tx(f"S{i}", m.iso_from_epoch(T0 + event), 10.0 + i, customer="C-skew")
        log_ms = (
            int(time.time() * 1000) + 365 * DAY * 1000 if log_s is None else l0_ms + log_s * 1000
        )
        out.append((b"C-skew", orjson.dumps(row), log_ms))
    return out


def _expected_skew_features(stream: list[tuple[int, int | None]], dead: set[int]) -> pd.DataFrame:
    engine = StreamingFeatureEngine(LABEL_DELAY_DAYS)
    rows = {}
    for i, (event, _) in enumerate(stream):
        if i not in dead:
            rows[f"S{i}"] = engine.update("C-skew", "M1", T0 + event, 10.0 + i)
    return pd.DataFrame.from_dict(rows, orient="index")[list(c.STATEFUL_FEATURES)]


@pytest.mark.slow
def test_the_skew_rule_dead_letters_exactly_the_jumps(
    broker,
    model_server,
    model_base,
    tmp_path,
) -> None:
    """A transaction may move its partition's event time at most the skew (one day) plus how
    far the log clock moved since the newest accepted one; the same rule holds when the state is
    rebuilt by re-reading, so the features after a restart equal an uninterrupted run's."""
    bootstrap = broker.bootstrap_servers
    topics = make_topics(bootstrap, partitions=1)
    l0_ms = int(time.time() * 1000) - 10 * DAY * 1000
    _produce(bootstrap, topics.transactions, _skew_messages(SKEW_STREAM, 0, l0_ms))
    state = tmp_path / "state"
    first = consume(bootstrap, topics, model_server, model_base, state, group_id="skew")
    assert (first.decided, first.dead_lettered) == (len(SKEW_STREAM) - len(SKEW_DEAD), 3)
    dead = read_topic(bootstrap, topics.dead_letter, expect=len(SKEW_DEAD))
    assert {d["value"][F.SOURCE_OFFSET] for d in dead} == SKEW_DEAD
    assert {d["value"][F.REASON_KIND] for d in dead} == {m.TIMESTAMP_OUT_OF_RANGE}
    by_offset = {d["value"][F.SOURCE_OFFSET]: d["value"][F.REASON] for d in dead}
    assert "86,401 s ahead" in by_offset[2] and "limit of 86,400 s" in by_offset[2]
    assert "plus 172,800.000 s the log clock moved" in by_offset[4]

    # The state is lost: the restart re-reads offsets 0-9 for state only (same rule), then
    # decides offset 10.
    shutil.rmtree(state / "snapshots")
    _produce(bootstrap, topics.transactions, _skew_messages([SKEW_NEXT], 10, l0_ms))
    second = consume(bootstrap, topics, model_server, model_base, state, group_id="skew")
    assert (second.decided, second.dead_lettered, second.replayed_for_state) == (1, 0, 10)
    expected = _expected_skew_features([*SKEW_STREAM, SKEW_NEXT], SKEW_DEAD)
    decisions = read_topic(bootstrap, topics.decisions, expect=len(expected))
    assert len(decisions) == len(expected)  # nothing decided twice
    assert len(read_topic(bootstrap, topics.dead_letter, expect=len(SKEW_DEAD))) == 3
    pd.testing.assert_frame_equal(decision_features(decisions).loc[expected.index], expected)

    # And an uninterrupted run over all eleven decides the same.
    out = outputs_of(topics, "whole", bootstrap, partitions=1)
    whole = consume(bootstrap, out, model_server, model_base, tmp_path / "w", group_id="whole")
    assert (whole.decided, whole.dead_lettered) == (len(expected), len(SKEW_DEAD))
    pd.testing.assert_frame_equal(
        decision_features(read_topic(bootstrap, out.decisions, expect=len(expected))).loc[
            expected.index
        ],
        expected,
    )
