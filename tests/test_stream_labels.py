"""The labels barrier (streaming.labels) against the embedded broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from stream_fixtures import make_topics, simulated


def _produce(bootstrap: str, topic: str, values: dict[int, list[bytes]], linger_ms: int) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=linger_ms)
    try:
        for partition, vals in values.items():
            for value in vals:
                future = producer.send(topic, value=value, partition=partition)
                if not linger_ms:
                    future.get(timeout=30)  # one record per stored batch
        producer.flush(timeout=30)
    finally:
        producer.close()


@contextmanager
def _feed(bootstrap: str, topic: str, **client: Any) -> Iterator[tuple[Any, Any]]:
    from streaming.labels import LabelFeed
    from streaming.metrics import StreamMetrics
    from streaming.state import LabelRouter

    router = LabelRouter()
    feed = LabelFeed(
        {"bootstrap_servers": bootstrap, **client}, topic, router, StreamMetrics(), None
    )
    try:
        feed.start(timeout_s=30)
        yield feed, router
    finally:
        feed.close()


def test_each_drain_hands_over_every_label_published_before_it(broker) -> None:
    from core.features.stream import StreamingFeatureEngine
    from streaming.replay import replay_frame
    from streaming.state import PartitionState

    df = simulated(40, 20, seed=9)
    split = len(df) // 2
    topics = make_topics(broker.bootstrap_servers)
    with _feed(broker.bootstrap_servers, topics.labels) as (feed, router):
        # A state that has seen no transaction yet keeps every label it is offered, in its heap.
        state = router.partitions[0] = PartitionState(0, StreamingFeatureEngine())

        assert feed.drain() == 0
        first = replay_frame(
            df.iloc[:split], broker.bootstrap_servers, topics, progress=False, trailing_labels=False
        )
        assert feed.drain() == first.labels > 0
        assert len(state.pending) == first.labels
        second = replay_frame(
            df.iloc[split:], broker.bootstrap_servers, topics, progress=False, prior=df.iloc[:split]
        )
        assert feed.drain() == second.labels > 0
        assert len(state.pending) == first.labels + second.labels == len(df)
        assert feed.drain() == 0
        assert sum(feed.positions().values()) == len(df)
        # A rewind reads everything again (for partition states that are new).
        feed.rewind()
        assert feed.drain() == len(df)
        assert sum(feed.positions().values()) == len(df)


def test_a_partition_of_many_tiny_batches_is_read_to_its_end(broker) -> None:
    """One-record batches, and a last batch of several records: Tansu reports the end offset of
    a partition as the start of its last batch plus one, and the drain still reads all of it."""
    from streaming.messages import encode

    topic = make_topics(broker.bootstrap_servers, partitions=1).labels
    n = 1500
    values = [encode({"n": i}) for i in range(n)]  # not labels: counted and skipped, still read
    _produce(broker.bootstrap_servers, topic, {0: values}, linger_ms=0)
    with _feed(broker.bootstrap_servers, topic) as (feed, _):
        assert feed.drain() == n
        assert feed.positions() == {0: n}
        assert feed.metrics.labels_rejected._value.get() == n
        _produce(broker.bootstrap_servers, topic, {0: values[:5]}, linger_ms=50)  # one batch
        assert feed.drain() == 5
        assert feed.positions() == {0: n + 5}


def test_a_drain_with_the_broker_gone_gives_up_after_its_timeout(caplog) -> None:
    """Scoring must not stall on the labels topic: with the broker gone the drain retries until
    its catch-up timeout, says so, and returns (the rest is read at a later drain)."""
    from streaming.broker import EmbeddedBroker

    with EmbeddedBroker() as own:
        topic = make_topics(own.bootstrap_servers).labels
        with _feed(own.bootstrap_servers, topic, request_timeout_ms=2_000) as (feed, _):
            assert feed.drain() == 0
            own.stop()
            feed.catch_up_timeout_s = 1.0
            started = time.monotonic()
            with caplog.at_level("WARNING", logger="streaming.labels"):
                assert feed.drain() == 0
            assert time.monotonic() - started < 10
            assert "not caught up" in caplog.text
            assert feed.last_drain["retries"] > 0


def test_every_polled_transaction_finds_the_labels_appended_before_it(broker) -> None:
    """The barrier: a producer appends label i, then (acknowledged) transaction i, while a
    consumer polls the transactions in batches and drains the labels after each poll, as the
    scoring consumer does. Every transaction of a batch must find its label already handed over,
    however the batches fall against the producer."""
    import threading

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    from core import contract as c
    from streaming.messages import label_message

    topics = make_topics(broker.bootstrap_servers)
    n = 600
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=0)

    def publish() -> None:
        for i in range(n):
            label = {
                c.TRANSACTION_ID: str(i),
                c.TERMINAL_ID: "M1",
                c.CUSTOMER_ID: "C1",
                c.TIMESTAMP: "2025-03-01T10:00:00Z",
                c.LABEL: 0,
                c.LABEL_AVAILABLE_AT: "2025-03-08T10:00:00Z",
            }
            producer.send(topics.labels, value=label_message(label), partition=i % 3).get(30)
            producer.send(topics.transactions, value=str(i).encode(), partition=i % 3).get(30)

    transactions = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        metrics_enabled=False,
    )
    transactions.assign([TopicPartition(topics.transactions, p) for p in range(3)])
    handed_over: set[str] = set()
    seen: list[int] = []
    batches = 0
    writer = threading.Thread(target=publish)
    with _feed(broker.bootstrap_servers, topics.labels) as (feed, _):
        feed.on_labels = lambda labels: handed_over.update(lb.transaction_id for lb in labels)
        writer.start()
        try:
            deadline = time.monotonic() + 120
            while len(seen) < n and time.monotonic() < deadline:
                polled = transactions.poll(timeout_ms=100, max_records=50)
                if not polled:
                    continue
                feed.drain()
                batches += 1
                for records in polled.values():
                    for record in records:
                        i = record.value.decode()
                        assert i in handed_over, f"transaction {i} polled before its label"
                        seen.append(int(i))
        finally:
            writer.join(timeout=120)
            producer.close()
            transactions.close()
    assert sorted(seen) == list(range(n))
    assert batches > 10  # the batches raced the producer, not read it at the end
