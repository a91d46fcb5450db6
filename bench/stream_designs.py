"""The designs the streaming benchmark compares, each run against the same topics.

1. ``raw_pipe``: a kafka-python group consumer that produces the same JSON to another topic,
   committing per poll batch: no features, no scoring. The ceiling.
2. ``per_message``: the same loop computing features and making ONE REST :predict call per
   transaction.
3. ``our_consumer``: the scoring consumer (``streaming.consumer``).

``relay`` is (1) as its own process, for the latency floor of the broker and client.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import Any


def _pipe_clients(
    bootstrap: str, source: str, group_id: str, batch_size: int, **consumer_extra: Any
) -> tuple[Any, Any]:
    """The group consumer and acks=all producer every reference loop here uses, so (1), (2) and
    the relay differ only in what they do per message; they fetch with the scoring consumer's
    fetch wait (the broker holds each fetch that long), so the ceiling is configured like (3)."""
    from kafka import KafkaConsumer, KafkaProducer

    from streaming.consumer import ConsumerConfig

    consumer = KafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        group_id=group_id,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch_size,
        session_timeout_ms=10_000,
        heartbeat_interval_ms=3_000,
        metrics_enabled=False,
        fetch_max_wait_ms=ConsumerConfig.fetch_max_wait_ms,
        **consumer_extra,
    )
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=1000, metrics_enabled=False
    )
    return consumer, producer


def raw_pipe(
    bootstrap: str, source: str, sink: str, n: int, batch_size: int, run: str = "a"
) -> float:
    """(1): consume and produce the same bytes, commit per batch; returns tx/s."""
    from streaming.messages import encode, parse_transaction

    consumer, producer = _pipe_clients(
        bootstrap, source, f"bench-raw-{os.getpid()}-{run}", batch_size
    )
    done = 0
    started: float | None = None
    try:
        while done < n:
            records = consumer.poll(timeout_ms=500, max_records=min(batch_size, n - done))
            if not records:
                continue
            started = started or time.monotonic()
            for msgs in records.values():
                for msg in msgs:
                    # Decode and re-encode: the JSON handling every real consumer needs.
                    producer.send(sink, key=msg.key, value=encode(parse_transaction(msg.value)))
                    done += 1
            producer.flush()
            consumer.commit()
        assert started is not None
        return n / (time.monotonic() - started)
    finally:
        producer.close()
        consumer.close(autocommit=False)


def per_message(
    bootstrap: str,
    source: str,
    sink: str,
    n: int,
    batch_size: int,
    client: Any,
    label_delay: int,
    run: str = "a",
) -> float:
    """(2): features per transaction and one :predict per transaction; returns tx/s."""
    from core import contract as c
    from core.features.stream import StreamingFeatureEngine
    from streaming.messages import encode, epoch_seconds, parse_transaction

    consumer, producer = _pipe_clients(
        bootstrap, source, f"bench-per-message-{os.getpid()}-{run}", batch_size
    )
    engine = StreamingFeatureEngine(label_delay)
    done = 0
    started: float | None = None
    try:
        while done < n:
            records = consumer.poll(timeout_ms=500, max_records=min(batch_size, n - done))
            if not records:
                continue
            started = started or time.monotonic()
            for msgs in records.values():
                for msg in msgs:
                    tx = parse_transaction(msg.value)
                    assert isinstance(tx, dict)
                    feats = engine.update(
                        tx[c.CUSTOMER_ID],
                        tx[c.TERMINAL_ID],
                        epoch_seconds(tx[c.TIMESTAMP]),
                        float(tx[c.AMOUNT]),
                    )
                    row = {c.TIMESTAMP: tx[c.TIMESTAMP], c.AMOUNT: float(tx[c.AMOUNT]), **feats}
                    score = float(client.predict([row]).scores[0])
                    out = {c.TRANSACTION_ID: tx[c.TRANSACTION_ID], "score": score}
                    producer.send(sink, key=msg.key, value=encode(out))
                    done += 1
            producer.flush()
            consumer.commit()
        assert started is not None
        return n / (time.monotonic() - started)
    finally:
        producer.close()
        consumer.close(autocommit=False)


def our_consumer(
    bootstrap: str,
    topics: Any,
    n: int,
    batch_size: int,
    serving_url: str,
    model_base: Path,
    state_dir: Path,
    snapshot_interval_s: float,
    run: str = "a",
) -> float:
    """(3): the scoring consumer in this process; returns tx/s over its busy time."""
    from streaming.consumer import ConsumerConfig, StreamConsumer
    from streaming.scoring import Scorer, ThresholdStore, build_model_client

    config = ConsumerConfig(
        bootstrap_servers=bootstrap,
        group_id=f"bench-consumer-{os.getpid()}-{run}",
        topics=topics,
        state_dir=state_dir,
        batch_size=batch_size,
        max_messages=n,
        snapshot_interval_s=snapshot_interval_s,
    )
    scorer = Scorer(build_model_client(serving_url, "fraud"), ThresholdStore(model_base))
    summary = StreamConsumer(config, scorer).run()
    if summary.decided + summary.dead_lettered != n:
        raise RuntimeError(f"consumer handled {summary.describe()}, expected {n}")
    return n / summary.active_seconds


def relay(bootstrap: str, source: str, sink: str, group_id: str) -> None:
    """The raw pipe as its own process, until SIGTERM: the latency ceiling of (1)."""
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    consumer, producer = _pipe_clients(bootstrap, source, group_id, 1000)
    try:
        while not stop:
            records = consumer.poll(timeout_ms=200, max_records=1000)
            for msgs in records.values():
                for msg in msgs:
                    producer.send(sink, key=msg.key, value=msg.value)
            if records:
                producer.flush()
                consumer.commit()
    finally:
        producer.close()
        consumer.close(autocommit=False)
