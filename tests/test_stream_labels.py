"""The labels barrier (serving.stream.labels) against the embedded broker."""

from __future__ import annotations

from typing import Any

import pytest
from stream_fixtures import broker, make_topics, simulated  # noqa: F401 - pytest fixture


@pytest.fixture
def labels_client(broker) -> Any:  # noqa: F811
    from kafka import KafkaConsumer

    client = KafkaConsumer(
        bootstrap_servers=broker.bootstrap_servers, group_id=None, metrics_enabled=False
    )
    yield client
    client.close()


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


def _feed(client: Any, topic: str) -> tuple[Any, Any]:
    from serving.stream.labels import BarrierFetcher, LabelFeed
    from serving.stream.metrics import StreamMetrics
    from serving.stream.state import LabelRouter

    router = LabelRouter()
    feed = LabelFeed(BarrierFetcher(client, topic), router, StreamMetrics(), None)
    feed.start(timeout_s=30)
    return feed, router


def test_a_fetch_returns_what_is_past_the_position_and_the_high_watermark(
    broker,  # noqa: F811
    labels_client,
) -> None:
    from serving.stream.labels import BarrierFetcher

    topic = make_topics(broker.bootstrap_servers).labels
    # Lingering puts each partition's records in one stored batch, so a fetch from the middle
    # gets the whole batch back from the broker and must drop what precedes its offset.
    values = {p: [f"{p}-{i}".encode() for i in range(5 + p)] for p in range(3)}
    _produce(broker.bootstrap_servers, topic, values, linger_ms=50)
    fetcher = BarrierFetcher(labels_client, topic)
    assert fetcher.partitions(timeout_s=30) == [0, 1, 2]
    assert fetcher.earliest([0, 1, 2]) == {0: 0, 1: 0, 2: 0}

    whole = fetcher.fetch({0: 0, 1: 0, 2: 0}, max_wait_ms=100)
    for p, vals in values.items():
        assert whole[p].records == list(enumerate(vals))
        assert whole[p].high_watermark == whole[p].next_offset == len(vals)

    middle = fetcher.fetch({1: 3}, max_wait_ms=100)
    assert list(middle) == [1]
    assert middle[1].records == [(3, b"1-3"), (4, b"1-4"), (5, b"1-5")]
    assert middle[1].next_offset == 6

    at_end = fetcher.fetch({p: len(v) for p, v in values.items()}, max_wait_ms=1)
    for p, vals in values.items():
        assert at_end[p].records == []
        assert at_end[p].high_watermark == at_end[p].next_offset == len(vals)


def test_each_drain_hands_over_every_label_published_before_it(broker, labels_client) -> None:  # noqa: F811
    from components.features.stream import StreamingFeatureEngine
    from serving.stream.replay import replay_frame
    from serving.stream.state import PartitionState

    df = simulated(40, 20, seed=9)
    split = len(df) // 2
    topics = make_topics(broker.bootstrap_servers)
    feed, router = _feed(labels_client, topics.labels)
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


def test_a_partition_of_many_tiny_batches_is_read_to_its_end(broker, labels_client) -> None:  # noqa: F811
    """Tansu answers a fetch that must skip many stored batches with nothing once its scan
    outlasts the fetch wait: the reader raises its wait and still reads everything."""
    from serving.stream.messages import encode

    topic = make_topics(broker.bootstrap_servers, partitions=1).labels
    n = 1500
    values = [encode({"n": i}) for i in range(n)]  # not labels: counted and skipped, still read
    _produce(broker.bootstrap_servers, topic, {0: values}, linger_ms=0)
    feed, _ = _feed(labels_client, topic)
    assert feed.drain() == n
    assert feed.positions() == {0: n}
    assert feed.metrics.labels_rejected._value.get() == n
    _produce(broker.bootstrap_servers, topic, {0: values[:3]}, linger_ms=0)
    assert feed.drain() == 3
    assert feed.positions() == {0: n + 3}


def test_a_drain_with_the_broker_gone_gives_up_after_its_timeout(caplog) -> None:
    """Scoring must not stall on the labels topic: with the broker gone the drain retries until
    its catch-up timeout, says so, and returns (the rest is read at a later drain)."""
    import time

    from kafka import KafkaConsumer

    from serving.stream.broker import EmbeddedBroker

    with EmbeddedBroker() as own:
        topic = make_topics(own.bootstrap_servers).labels
        client = KafkaConsumer(
            bootstrap_servers=own.bootstrap_servers,
            group_id=None,
            metrics_enabled=False,
            request_timeout_ms=2_000,
        )
        try:
            feed, _ = _feed(client, topic)
            assert feed.drain() == 0
            own.stop()
            feed.catch_up_timeout_s = 1.0
            started = time.monotonic()
            with caplog.at_level("WARNING", logger="serving.stream.labels"):
                assert feed.drain() == 0
            assert time.monotonic() - started < 10
            assert "not caught up" in caplog.text
            assert feed.last_drain["retries"] > 0
        finally:
            client.close()


class _ScriptedBroker:
    """Answers the feed's fetches from a script, recording the wait each one asked for: the
    wait policy's decisions, exactly, without a broker's timing."""

    topic = "labels"

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script = script  # per fetch: (records returned, high watermark), one partition
        self.waits: list[int] = []

    def partitions(self, timeout_s: float) -> list[int]:
        return [0]

    def earliest(self, partitions: list[int]) -> dict[int, int]:
        return dict.fromkeys(partitions, 0)

    def fetch(self, positions: dict[int, int], max_wait_ms: int) -> dict[int, Any]:
        from serving.stream.labels import FetchedPartition
        from serving.stream.messages import encode

        self.waits.append(max_wait_ms)
        n, high = self.script.pop(0)
        start = positions[0]
        records = [(start + i, encode({"n": start + i})) for i in range(n)]
        return {0: FetchedPartition(high, records, start + n)}


def test_the_fetch_wait_doubles_on_empty_answers_and_halves_on_fast_ones() -> None:
    from serving.stream.labels import LabelFeed
    from serving.stream.metrics import StreamMetrics
    from serving.stream.state import LabelRouter

    script = [(0, 5), (0, 5), (0, 5), (5, 5)]  # behind, answered empty three times, then read
    script += [(3, 8), (2, 10), (1, 11)]  # three drains answered at once
    script += [(0, 11)] * 60  # nothing new: each answered after the whole wait (on a broker)
    scripted = _ScriptedBroker(script)
    feed = LabelFeed(scripted, LabelRouter(), StreamMetrics(), None)  # type: ignore[arg-type]
    feed.start()
    assert feed.drain() == 5
    assert scripted.waits == [1, 2, 4, 8] and feed.wait_ms == 8  # raised while answered empty
    assert [feed.drain() for _ in range(3)] == [3, 2, 1]
    assert scripted.waits[4:] == [8, 4, 2] and feed.wait_ms == 1  # records fast: halved each time
    feed.wait_ms = 4
    for _ in range(LabelFeed.WAIT_DECAY_DRAINS - 1):
        assert feed.drain() == 0
    assert feed.wait_ms == 4  # nothing new says nothing about the scan: come down slowly
    assert feed.drain() == 0
    assert feed.wait_ms == 2


def test_one_fetch_of_two_topics_reads_the_second_after_the_first(broker, labels_client) -> None:  # noqa: F811
    """The scoring consumer fetches transactions and labels in one request, transactions
    first: every label appended before a fetched transaction must come back with it. A
    producer appends label i, then (acknowledged) transaction i, while fetches run. Each fetch
    reads the labels from the start, past many one-record batches: the broker takes a while to
    read them, so a request that read the labels first would see later transactions."""
    import threading

    from kafka import KafkaProducer

    from serving.stream.labels import BarrierFetcher, Message

    topics = make_topics(broker.bootstrap_servers)
    fetcher = BarrierFetcher(labels_client, topics.labels)
    tx_parts = fetcher.partitions(30, topics.transactions)
    label_parts = fetcher.partitions(30)
    n = 600
    filler = 1_000
    _produce(
        broker.bootstrap_servers,
        topics.labels,
        {p: [b"-1"] * filler for p in label_parts},
        linger_ms=0,
    )
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap_servers, acks="all", linger_ms=0)

    def publish() -> None:
        for i in range(n):
            producer.send(topics.labels, value=str(i).encode(), partition=i % 3).get(timeout=30)
            producer.send(
                topics.transactions,
                key=f"k{i}".encode(),
                value=str(i).encode(),
                partition=i % len(tx_parts),
                timestamp_ms=1_700_000_000_000 + i,
            ).get(timeout=30)

    writer = threading.Thread(target=publish)
    writer.start()
    tx_pos = dict.fromkeys(tx_parts, 0)
    from_start = dict.fromkeys(label_parts, 0)
    labels_seen: set[int] = set()
    txs_seen: list[Message] = []
    fetches_with_both = 0
    try:
        while len(txs_seen) < n:
            got = fetcher.fetch_topics(
                {topics.transactions: tx_pos, topics.labels: from_start},
                max_wait_ms=500,
                messages_of=topics.transactions,
            )
            for part in got.get(topics.labels, {}).values():
                assert part.next_offset == part.high_watermark
                labels_seen.update(int(v) for _, v in part.records)
            new = []
            for p, part in got.get(topics.transactions, {}).items():
                new += part.records
                tx_pos[p] = part.next_offset
            for msg in new:
                i = int(msg.value)
                assert i in labels_seen, f"transaction {i} fetched without its earlier label"
                assert (msg.topic, msg.key, msg.timestamp) == (
                    topics.transactions,
                    f"k{i}".encode(),
                    1_700_000_000_000 + i,
                )
            fetches_with_both += bool(new)
            txs_seen += new
    finally:
        writer.join(timeout=120)
        producer.close()
    assert sorted(int(m.value) for m in txs_seen) == list(range(n))
    assert fetches_with_both > 10  # the fetches raced the producer, not read it at the end


def test_the_fetch_wait_rises_on_empty_answers_and_comes_back_to_its_floor() -> None:
    """The consumer's transactions fetch: floor 10 ms (its configured wait), cap 500 ms."""
    from serving.stream.labels import FetchWait

    wait = FetchWait(10, 500)
    for expected in (20, 40, 80, 160, 320, 500, 500):
        wait.stalled()
        assert wait.ms == expected
    wait.settle(0.2)  # a round with a stall never lowers it
    assert wait.ms == 500
    wait.settle(0.2)  # records in 200 ms: not under a quarter of 500
    assert wait.ms == 500
    wait.settle(0.1)
    assert wait.ms == 250
    wait.settle(0.001)
    assert wait.ms == 125
    for _ in range(FetchWait.DECAY_AFTER - 1):
        wait.settle(None)  # nothing new: says nothing of the scan
    assert wait.ms == 125
    wait.settle(None)
    assert wait.ms == 62
    for _ in range(4):
        wait.settle(0.0)
    assert wait.ms == 10  # never below the floor
