"""Re-sent transaction ids on the real broker and model server: an identical re-send is
skipped, one with other content is dead-lettered, in the same batch or any later one, and the
window survives a restart (it is part of the partition snapshot)."""

from __future__ import annotations

import base64

import orjson
import pytest
from stream_fixtures import (
    consume,
    make_topics,
    read_topic,
)

from core import contract as c
from streaming import messages as m
from streaming.messages import DeadLetterFields

pytestmark = pytest.mark.slow


def _tx(i: int, amount: float = 10.0) -> bytes:
    return orjson.dumps(
        {
            c.TRANSACTION_ID: f"T-{i}",
            c.TIMESTAMP: f"2025-01-05T10:{i:02d}:00Z",
            c.CUSTOMER_ID: "C1",  # one key, one partition: the window is per partition
            c.TERMINAL_ID: f"M{i % 4}",
            c.AMOUNT: amount,
        }
    )


def _send(bootstrap: str, topic: str, values: list[bytes]) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for value in values:
        producer.send(topic, key=b"C1", value=value)
    producer.flush()
    producer.close()


def test_repeats_across_batches_and_a_restart(broker, model_server, model_base, tmp_path):
    topics = make_topics(broker.bootstrap_servers)
    state = tmp_path / "state"
    run = dict(group_id="repeats", batch_size=10)
    # Thirty transactions, with a same-batch identical repeat and a same-batch conflict.
    _send(
        broker.bootstrap_servers,
        topics.transactions,
        [_tx(i) for i in range(30)] + [_tx(29), _tx(28, amount=99.0)],
    )
    first = consume(broker.bootstrap_servers, topics, model_server, model_base, state, **run)
    assert (first.decided, first.dead_lettered, first.repeats_skipped) == (30, 1, 1)
    # A later run (restored from the snapshot): seven identical re-sends, seven conflicts.
    _send(
        broker.bootstrap_servers,
        topics.transactions,
        [_tx(i) for i in range(7)] + [_tx(i, amount=50.0 + i) for i in range(7, 14)],
    )
    second = consume(broker.bootstrap_servers, topics, model_server, model_base, state, **run)
    assert (second.decided, second.dead_lettered, second.repeats_skipped) == (0, 7, 7)
    decided = read_topic(broker.bootstrap_servers, topics.decisions, expect=30)
    assert sorted(d["value"][c.TRANSACTION_ID] for d in decided) == sorted(
        f"T-{i}" for i in range(30)
    )
    dead = read_topic(broker.bootstrap_servers, topics.dead_letter, expect=8)
    assert {d["value"][DeadLetterFields.REASON_KIND] for d in dead} == {m.DUPLICATE_TRANSACTION_ID}
    amounts = sorted(
        orjson.loads(base64.b64decode(d["value"][DeadLetterFields.VALUE_B64]))[c.AMOUNT]
        for d in dead
    )
    assert amounts == [50.0 + i for i in range(7, 14)] + [99.0]
