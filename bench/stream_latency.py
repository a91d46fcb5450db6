"""End-to-end latency at a paced rate, and what the broker's cost per request does as a
partition fills: the latency half of the streaming benchmark.

A run replays a frame through a process (the scoring consumer, or the raw pipe's relay) on
topics of its own, and reads back the (produced at, end-to-end ms) of each transaction.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.results import REPO

WARMUP_TRANSACTIONS = 200
# (produced at ms, end-to-end ms) per transaction of a latency run, in time order
Timed = list[tuple[float, float]]


def cpu_times() -> tuple[int, int] | None:
    """(steal, total) jiffies of all CPUs so far, from /proc/stat (None where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    except OSError:
        return None
    values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
    return values[7], sum(values)


def steal_pct(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Percent of CPU time the hypervisor gave to other guests between two ``cpu_times()``:
    load from the machine's neighbours, which moves every latency figure here."""
    if before is None or after is None or after[1] == before[1]:
        return None
    return 100.0 * (after[0] - before[0]) / (after[1] - before[1])


def latencies(timed: list[tuple[float, float]]) -> list[float]:
    return [ms for _, ms in timed]


def p99_by_window(timed: list[tuple[float, float]], seconds: float) -> list[float]:
    """p99 end-to-end ms of each ``seconds`` of a run, in order (``timed`` in time order)."""
    import numpy as np

    if not timed:
        return []
    start = timed[0][0]
    windows: dict[int, list[float]] = {}
    for at, ms in timed:
        windows.setdefault(int((at - start) // (seconds * 1000)), []).append(ms)
    return [float(np.percentile(windows[k], 99)) for k in sorted(windows)]


def _paced_through(
    fx: Any,
    cmd: list[str],
    log_path: Path,
    bootstrap: str,
    topics: Any,
    sink: str,
    frame: Any,
    rate: float,
    prior: Any,
) -> tuple[list[dict[str, Any]], int]:
    """Run ``cmd`` (a process that writes one ``sink`` record per transaction it reads) while
    ``frame`` is replayed: the first ``WARMUP_TRANSACTIONS`` unpaced (group join, first calls),
    the rest at ``rate``; returns every sink record once they are all there, and how many labels
    the paced part published. ``frame`` starts mid-stream after ``prior``, whose labels falling
    due during it are published with it."""
    import pandas as pd

    from streaming.replay import Pacing, replay_frame

    warmup, measured = frame.iloc[:WARMUP_TRANSACTIONS], frame.iloc[WARMUP_TRANSACTIONS:]
    log_file = open(log_path, "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=fx.child_env(topics), stdout=log_file, stderr=log_file
    )
    try:
        replay_frame(warmup, bootstrap, topics, progress=False, trailing_labels=False, prior=prior)
        fx.read_topic(bootstrap, sink, expect=len(warmup), timeout_s=120)
        # No trailing labels: dumping every label not yet due at the end (thousands at once) is
        # the end of a finite replay, not a steady stream, and the last batches waited for it.
        paced = replay_frame(
            measured,
            bootstrap,
            topics,
            pacing=Pacing(rate=rate),
            progress=False,
            trailing_labels=False,
            prior=pd.concat([prior, warmup]),
        )
        return fx.read_topic(bootstrap, sink, expect=len(frame), timeout_s=120), paced.labels
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        log_file.close()


def raw_latency_run(
    fx: Any, bootstrap: str, frame: Any, prior: Any, rate: float, work: Path, tag: str
) -> list[tuple[float, float]]:
    """(relayed at, end-to-end ms) of each transaction replayed at ``rate`` through ``relay`` in
    a subprocess, on topics of its own named by ``tag``, in time order; end to end is source
    record -> relayed record, both producer timestamps."""
    from core import contract as c

    topics = fx.make_topics(bootstrap, f"bench-raw-latency-{tag}")
    sink = topics.decisions  # created with the set (a topic read before it exists reads nothing)
    cmd = [sys.executable, "-m", "bench.bench_stream", "--relay", bootstrap, topics.transactions]
    out, _ = _paced_through(
        fx,
        [*cmd, sink],
        work / f"raw-latency-{tag}.log",
        bootstrap,
        topics,
        sink,
        frame,
        rate,
        prior,
    )
    source = fx.read_topic(bootstrap, topics.transactions, expect=len(frame), timeout_s=120)
    sent = {m["value"][c.TRANSACTION_ID]: m["timestamp_ms"] for m in source}
    wanted = set(frame.iloc[WARMUP_TRANSACTIONS:][c.TRANSACTION_ID])
    return sorted(
        (m["timestamp_ms"], m["timestamp_ms"] - sent[m["value"][c.TRANSACTION_ID]])
        for m in out
        if m["value"][c.TRANSACTION_ID] in wanted
    )


def latency_run(
    fx: Any,
    bootstrap: str,
    frame: Any,
    prior: Any,
    rate: float,
    serving_url: str,
    model_base: Path,
    work: Path,
    batch_size: int,
    snapshot_interval_s: float,
    tag: str,
    extra: tuple[str, ...] = (),
) -> tuple[list[tuple[float, float]], int]:
    """(decided at, end-to-end ms) of each transaction replayed at ``rate`` to a consumer
    subprocess (given the ``extra`` options), on topics (and with a group and state) of its own
    named by ``tag``, in time order; and how many labels were published among the paced
    transactions."""
    from core import contract as c
    from streaming.messages import DecisionFields

    topics = fx.make_topics(bootstrap, f"bench-latency-{tag}")
    cmd = fx.consumer_command(
        bootstrap,
        serving_url,
        model_base,
        work / f"latency-state-{tag}",
        f"bench-latency-{tag}",
        "--batch-size",
        str(batch_size),
        "--snapshot-interval-seconds",
        str(snapshot_interval_s),
        *extra,
    )
    cmd.remove("--include-features")
    decisions, labels = _paced_through(
        fx,
        cmd,
        work / f"latency-consumer-{tag}.log",
        bootstrap,
        topics,
        topics.decisions,
        frame,
        rate,
        prior,
    )
    wanted = set(frame.iloc[WARMUP_TRANSACTIONS:][c.TRANSACTION_ID])
    timed = sorted(
        (d["timestamp_ms"], d["value"][DecisionFields.END_TO_END_MS])
        for d in decisions
        if d["value"][c.TRANSACTION_ID] in wanted
    )
    return timed, labels


BROKER_FILL_BATCHES = 8_000


def broker_fill_cost(fx: Any, bootstrap: str, fill: int = BROKER_FILL_BATCHES) -> dict[str, float]:
    """Median ms of a ListOffsets and of a fetch at the end of one partition, when it holds 50
    record batches and when it holds ``fill`` more: what the embedded broker's cost per request
    does as a partition fills (Tansu's in-memory store grows linearly; Kafka looks offsets up
    in an index)."""
    import statistics

    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    topic = fx.make_topics(bootstrap, "bench-broker-fill", partitions=1).transactions
    tp = TopicPartition(topic, 0)
    # One record per request, each waited for: one stored batch per record, as a paced stream
    # makes them.
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=0, metrics_enabled=False
    )
    # A fetch that finds records is answered at once; with a wait shorter than the scan (5 ms
    # at 8,000 batches) Tansu answers with nothing, every time.
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=100, metrics_enabled=False
    )
    consumer.assign([tp])
    out: dict[str, float] = {"fill_batches": float(fill)}
    try:
        for stage, count in (("empty", 50), ("full", fill)):
            for _ in range(count):
                producer.send(topic, b"x" * 200).get(timeout=30)
            lists, fetches = [], []
            for _ in range(30):
                started = time.perf_counter()
                end = consumer.end_offsets([tp])[tp]
                lists.append((time.perf_counter() - started) * 1000)
            for _ in range(30):
                consumer.seek(tp, max(0, end - 3))
                started = time.perf_counter()
                if not consumer.poll(timeout_ms=5_000):
                    raise RuntimeError(
                        f"broker fill cost: nothing fetched from {topic} at offset {end - 3} "
                        f"(end offset {end}) within 5 s"
                    )
                fetches.append((time.perf_counter() - started) * 1000)
            out[f"list_offsets_{stage}_ms"] = statistics.median(lists)
            out[f"fetch_{stage}_ms"] = statistics.median(fetches)
    finally:
        producer.close()
        consumer.close()
    return out
