"""A seeded fuzz stream through the real broker and model server.

10,000 messages: a simulated stream (with boundary amounts) replayed with its labels, and among
its transactions malformed, oversized, invalid, far-timestamped and too-long-id messages, then
identical and conflicting re-sends. Every message must end as exactly one decision or one dead
letter (an identical re-send: skipped, counted, its first decision stands), the consumer must
never stop, and the features of the good transactions must equal the batch engine's.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from stream_fixtures import (
    consume,
    decision_features,
    make_topics,
    read_topic,
    reference_stream_features,
    simulated,
)

from core import contract as c
from streaming import messages as m
from streaming.messages import DeadLetterFields
from streaming.replay import Pacing, replay_frame

pytestmark = pytest.mark.slow
TOTAL = 10_000
SEED = 20_261_206
MAX_MESSAGE_BYTES = 32 * 1024  # the consumer's maximum here: oversized ones stay cheap to send
REPEATS = 600  # half identical, half with other content


@dataclass
class Sent:
    """The bad messages sent, by (partition, offset), with the dead letter kind expected."""

    expected: dict[tuple[int, int], str] = field(default_factory=dict)
    identical: int = 0


def _good_stream() -> pd.DataFrame:
    df = simulated(120, 25, seed=7)
    rng = np.random.default_rng(SEED)
    # Valid boundary amounts are ordinary transactions: the reference features include them.
    at = rng.choice(len(df), size=20, replace=False)
    df.loc[at[:10], c.AMOUNT] = 0.0
    df.loc[at[10:], c.AMOUNT] = c.MAX_AMOUNT
    return df


def _bad_message(kind: str, i: int, rng: np.random.Generator, future_ts: str) -> tuple[bytes, str]:
    """One hostile message of ``kind`` and the dead-letter reason kind it must get."""
    tx = {
        c.TRANSACTION_ID: f"BAD-{i}",
        c.TIMESTAMP: "2025-01-05T10:00:00Z",
        c.CUSTOMER_ID: f"X{i % 17}",
        c.TERMINAL_ID: "M1",
        c.AMOUNT: 10.0,
    }
    if kind == "malformed":
        return orjson.dumps(tx)[: int(rng.integers(1, 40))], m.MALFORMED_JSON
    if kind == "not_object":
        return orjson.dumps([tx]), m.NOT_AN_OBJECT
    if kind == "missing":
        del tx[str(rng.choice(list(c.LIVE_FIELDS)))]
        return orjson.dumps(tx), m.MISSING_FIELD
    if kind == "oversized":
        size = int(rng.integers(MAX_MESSAGE_BYTES + 1, 3 * MAX_MESSAGE_BYTES))
        return orjson.dumps(tx | {"padding": "p" * size}), m.MESSAGE_TOO_LARGE
    if kind == "amount":
        bad = [-1.0, 1e39, 1e308, c.MAX_AMOUNT * 1.5, "12,50", True, "NaN"]
        return orjson.dumps(tx | {c.AMOUNT: bad[i % len(bad)]}), m.INVALID_VALUE
    if kind == "far":
        far = ["9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z", "2300-01-01T00:00:00Z"]
        return orjson.dumps(tx | {c.TIMESTAMP: far[i % len(far)]}), m.TIMESTAMP_OUT_OF_RANGE
    if kind == "ahead":  # in the contract's range, but a month past every partition's time
        return orjson.dumps(tx | {c.TIMESTAMP: future_ts}), m.TIMESTAMP_OUT_OF_RANGE
    if kind == "long_id":
        return orjson.dumps(tx | {c.TERMINAL_ID: "T" * (c.MAX_ID_CHARS + 1)}), m.INVALID_VALUE
    raise AssertionError(kind)


KINDS = ("malformed", "not_object", "missing", "oversized", "amount", "far", "ahead", "long_id")


def _send_chaos(
    bootstrap: str, topic: str, n: int, future_ts: str, sent: Sent, started: threading.Event
) -> None:
    from kafka import KafkaProducer

    rng = np.random.default_rng(SEED + 1)
    producer = KafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    started.wait(120)  # every partition has state: "ahead" is judged against a real time
    pending = []
    for i in range(n):
        kind = KINDS[int(rng.integers(len(KINDS)))]
        value, reason = _bad_message(kind, i, rng, future_ts)
        key = f"X{i % 17}".encode()
        pending.append((producer.send(topic, key=key, value=value), reason))
        if i % 50 == 0:
            time.sleep(0.01)  # spread among the good ones
    producer.flush()
    for future, reason in pending:
        meta = future.get(timeout=60)
        sent.expected[(meta.partition, meta.offset)] = reason
    producer.close()


def _send_repeats(bootstrap: str, topic: str, df: pd.DataFrame, sent: Sent) -> None:
    from kafka import KafkaProducer

    rng = np.random.default_rng(SEED + 2)
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    rows = df.iloc[rng.choice(len(df), size=REPEATS, replace=False)].to_dict("records")
    pending = []
    for k, row in enumerate(rows):
        if k % 2:
            row = row | {c.AMOUNT: float(row[c.AMOUNT]) / 2 + 1.0}  # other, still valid
        value = m.transaction_message(row)
        future = producer.send(topic, key=row[c.CUSTOMER_ID].encode(), value=value)
        pending.append((future, k % 2 == 1))
    producer.flush()
    for future, conflicting in pending:
        meta = future.get(timeout=60)
        if conflicting:
            sent.expected[(meta.partition, meta.offset)] = m.DUPLICATE_TRANSACTION_ID
        else:
            sent.identical += 1
    producer.close()


def test_every_message_ends_as_one_decision_or_one_dead_letter(
    broker,
    model_server,
    model_base,
    tmp_path,
) -> None:
    df = _good_stream()
    topics = make_topics(broker.bootstrap_servers)
    bootstrap = broker.bootstrap_servers
    n_bad = TOTAL - len(df) - REPEATS
    assert n_bad > 1000
    future_ts = m.iso_from_epoch(int(df[c.TIMESTAMP].max().timestamp()) + 30 * 86_400)
    sent = Sent()
    outcome: dict[str, Any] = {}

    def run_consumer() -> None:
        try:
            outcome["summary"] = consume(
                bootstrap,
                topics,
                model_server,
                model_base,
                tmp_path / "state",
                batch_size=500,
                exit_when_idle_s=8.0,
                max_message_bytes=MAX_MESSAGE_BYTES,
            )
        except BaseException as err:  # the consumer must never stop on a message
            outcome["error"] = err

    consumer = threading.Thread(target=run_consumer, daemon=True)
    consumer.start()
    started = threading.Event()
    chaos = threading.Thread(
        target=_send_chaos,
        args=(bootstrap, topics.transactions, n_bad, future_ts, sent, started),
        daemon=True,
    )
    chaos.start()
    head, tail = df.iloc[:1500], df.iloc[1500:]
    replay_frame(head, bootstrap, topics, trailing_labels=False, progress=False)
    started.set()
    replay_frame(tail, bootstrap, topics, pacing=Pacing(rate=1500), progress=False, prior=head)
    chaos.join(timeout=300)
    _send_repeats(bootstrap, topics.transactions, df, sent)
    consumer.join(timeout=600)
    assert "error" not in outcome, outcome.get("error")
    assert "summary" in outcome, "the consumer did not finish"
    summary = outcome["summary"]
    assert len(df) + n_bad + REPEATS == TOTAL

    decisions = read_topic(bootstrap, topics.decisions, expect=len(df))
    ids = Counter(d["value"][c.TRANSACTION_ID] for d in decisions)
    assert ids == Counter(df[c.TRANSACTION_ID].tolist())  # each good one decided exactly once
    dead = read_topic(bootstrap, topics.dead_letter, expect=len(sent.expected))
    got = Counter(
        (d["value"][DeadLetterFields.SOURCE_PARTITION], d["value"][DeadLetterFields.SOURCE_OFFSET])
        for d in dead
    )
    assert max(got.values()) == 1 and set(got) == set(sent.expected)
    kinds = {
        (
            d["value"][DeadLetterFields.SOURCE_PARTITION],
            d["value"][DeadLetterFields.SOURCE_OFFSET],
        ): d["value"][DeadLetterFields.REASON_KIND]
        for d in dead
    }
    assert kinds == sent.expected
    assert summary.repeats_skipped == sent.identical == REPEATS // 2
    assert (summary.decided, summary.dead_lettered) == (len(df), len(sent.expected))

    got_features = decision_features(decisions)
    expected = reference_stream_features(df).loc[got_features.index]
    mismatched = (got_features != expected).any(axis=1)
    assert not mismatched.any(), got_features[mismatched].head(3)
    assert np.isfinite(got_features.to_numpy()).all()
