"""Replay producer: publish a raw dataset to the transactions and labels topics in event time.

Transactions go out in stream order (timestamp, transaction_id), keyed by customer_id so one
customer's transactions stay ordered in one partition, without their label. Each label is
published to the labels topic when it becomes available (``label_available_at`` if the file has
it, else timestamp + label delay), interleaved with the transactions in time order: a label
available at t goes out before the first transaction at t or later.

Pacing: ``rate`` (transactions per second of wall time), ``speedup`` (event time runs that many
times faster than wall time) or neither (as fast as possible).

Ordering across topics is best effort, as in any Kafka deployment: the producer keeps one request
in flight and large batches, so a label is never sent in a later request than a transaction that
followed it; the consumer additionally reads the labels topic up to its end before each batch.
"""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core import contract as c
from core.settings import Topics
from streaming.kafka_config import KafkaSecurity, client_config
from streaming.messages import LABEL_FIELDS, encode

log = logging.getLogger(__name__)

_PROGRESS_EVERY = 1_000  # transactions between progress-bar refreshes (tqdm calls are not free)


@dataclass(frozen=True)
class ReplayResult:
    transactions: int
    labels: int
    trailing_labels: int  # labels that became available after the last transaction
    seconds: float

    @property
    def rate(self) -> float:
        return self.transactions / self.seconds if self.seconds > 0 else float("inf")


@dataclass(frozen=True)
class Pacing:
    """At most one of ``rate`` and ``speedup``; neither means as fast as possible."""

    rate: float | None = None
    speedup: float | None = None
    # Asked every few hundred messages for the current rate (overrides ``rate``): lets a demo
    # slow the stream down while something else happens, without restarting the replay.
    rate_source: Callable[[], float] | None = None

    def __post_init__(self) -> None:
        if self.rate is not None and self.speedup is not None:
            raise ValueError("replay: give --rate or --speedup, not both")
        for name in ("rate", "speedup"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"replay: {name} must be > 0, got {value}")


def replay_producer_config(
    bootstrap_servers: str, security: KafkaSecurity | None = None, linger_ms: int = 5
) -> dict[str, Any]:
    return {
        **client_config(bootstrap_servers, security),
        "acks": "all",
        # A few ms of batching: without it every record is its own batch, and Tansu's in-memory
        # fetch from the start of a topic of tiny batches gets slow enough to time out.
        "linger_ms": linger_ms,
        # One request in flight and batches that rarely fill up: every partition's pending batch
        # rides in the same request, which keeps labels ahead of later transactions.
        "max_in_flight_requests_per_connection": 1,
        "batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
        "metrics_enabled": False,  # kafka-python's per-record sensors cost ~10 % throughput
    }


def load_replay_frame(path: Path, label_delay_days: int) -> Any:
    """The dataset in stream order with a ``label_available_at`` column (UTC datetimes)."""
    import pandas as pd

    from core.dataio import read_transactions

    df = read_transactions(path)
    if c.LABEL_AVAILABLE_AT in df.columns:
        # pandas 2 needs format="ISO8601" for mixed ISO forms; 1.x parses them without it.
        iso = {"format": "ISO8601"} if int(pd.__version__.split(".")[0]) >= 2 else {}
        avail = pd.to_datetime(df[c.LABEL_AVAILABLE_AT], utc=True, errors="coerce", **iso)
        if avail.isna().any():
            row = int(np.flatnonzero(avail.isna().to_numpy())[0])
            raise ValueError(
                f"{path}: {c.LABEL_AVAILABLE_AT} unparsable at stream position {row}: "
                f"{df[c.LABEL_AVAILABLE_AT].iloc[row]!r}"
            )
        df[c.LABEL_AVAILABLE_AT] = avail.dt.floor("s")
    else:
        df[c.LABEL_AVAILABLE_AT] = df[c.TIMESTAMP] + pd.Timedelta(days=label_delay_days)
    return df


def replay(
    path: Path,
    bootstrap_servers: str,
    topics: Topics = Topics(),  # noqa: B008 - frozen dataclass, safe as a default
    pacing: Pacing = Pacing(),  # noqa: B008
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS,
    limit: int | None = None,
    trailing_labels: bool = True,
    progress: bool = True,
    security: KafkaSecurity | None = None,
    flush_timeout_s: float = 120.0,
) -> ReplayResult:
    """Publish ``path`` (CSV/Parquet raw schema with labels); returns what was sent.

    ``limit`` replays only the first N transactions (and the labels available by then, plus
    their own labels at the end if ``trailing_labels``).
    """
    df = load_replay_frame(Path(path), label_delay_days)
    if limit is not None:
        df = df.iloc[:limit].reset_index(drop=True)
    return replay_frame(
        df,
        bootstrap_servers,
        topics=topics,
        pacing=pacing,
        trailing_labels=trailing_labels,
        progress=progress,
        security=security,
        flush_timeout_s=flush_timeout_s,
    )


def replay_frame(
    df: Any,
    bootstrap_servers: str,
    topics: Topics = Topics(),  # noqa: B008
    pacing: Pacing = Pacing(),  # noqa: B008
    trailing_labels: bool = True,
    progress: bool = True,
    security: KafkaSecurity | None = None,
    flush_timeout_s: float = 120.0,
    prior: Any | None = None,
) -> ReplayResult:
    """Publish an in-memory frame in stream order (see ``load_replay_frame`` for its columns).

    ``prior``: the transactions of the stream before this frame (not published again). Their
    labels that were not yet due when that stream ended are published here, each at its
    availability, as this frame's own are: a replay that starts mid-stream then carries the
    labels a live stream carries at that point (with a 7-day delay, as many as transactions),
    and replaying a stream in consecutive parts (``trailing_labels=False`` but for the last)
    publishes the same labels in the same order as replaying it whole."""
    from kafka import KafkaProducer
    from tqdm import tqdm

    from core.dataio import format_timestamps, sort_stream_order
    from core.features.batch import epoch_seconds

    df = sort_stream_order(df)
    n = len(df)
    ts = epoch_seconds(df[c.TIMESTAMP])
    labelled = df
    if prior is not None and len(prior):
        import pandas as pd

        # A label is due before the first transaction at or after its availability, so those
        # available by the prior stream's last transaction were published with it.
        ended = epoch_seconds(prior[c.TIMESTAMP]).max()
        pending = prior[epoch_seconds(prior[c.LABEL_AVAILABLE_AT]) > ended]
        # Prior rows first: labels available at the same time keep the stream's order.
        labelled = pd.concat([sort_stream_order(pending), df], ignore_index=True)
    avail = epoch_seconds(labelled[c.LABEL_AVAILABLE_AT])
    tx_values = _tx_values(df, format_timestamps)
    label_values = _label_values(labelled, format_timestamps)
    tx_keys = [k.encode() for k in df[c.CUSTOMER_ID].astype(str)]
    label_keys = [k.encode() for k in labelled[c.TERMINAL_ID].astype(str)]
    n_labels = len(labelled)

    # Label j is due before the first transaction i with ts[i] >= avail[j]; in stream order that
    # is a binary search, so the interleaving is exact without sorting a merged event list.
    label_order = np.argsort(avail, kind="stable")
    due_before = np.searchsorted(ts, avail[label_order], side="left")

    producer = KafkaProducer(**replay_producer_config(bootstrap_servers, security))
    sent_labels = 0
    futures: list[Any] = []
    t0 = int(ts[0]) if n else 0
    bar = tqdm(total=n, unit="tx", desc="replay", disable=not progress, mininterval=0.5)
    # What is alive now (the encoded messages, the caller's heap) is kept out of the collector's
    # scans until the end: full collections inside the loop paused it for 50-70 ms in the
    # latency bench, every message already sent (its timestamp taken) waited that long for the
    # producer's thread, and the overdue ones then went out in a burst.
    gc.collect()
    gc.freeze()
    start = time.monotonic()
    next_due, rate = start, pacing.rate or 1.0
    try:
        j = 0
        for i in range(n):
            while j < n_labels and due_before[j] <= i:
                k = int(label_order[j])
                futures.append(
                    producer.send(topics.labels, key=label_keys[k], value=label_values[k])
                )
                j += 1
            if pacing.rate_source is not None:
                if i % 200 == 0:
                    rate = pacing.rate_source()
                next_due = _wait_dynamic(next_due, rate)
            else:
                _wait_until(start, i, int(ts[i]) - t0, pacing)
            futures.append(producer.send(topics.transactions, key=tx_keys[i], value=tx_values[i]))
            if (i + 1) % _PROGRESS_EVERY == 0:
                bar.update(_PROGRESS_EVERY)
                futures = _drop_done(futures)
        bar.update(n - bar.n)
        sent_labels = j
        trailing = 0
        if trailing_labels:
            while j < n_labels:
                k = int(label_order[j])
                futures.append(
                    producer.send(topics.labels, key=label_keys[k], value=label_values[k])
                )
                j += 1
                trailing += 1
        producer.flush(timeout=flush_timeout_s)
        failed = [f for f in futures if f.failed()]
        if failed:
            raise RuntimeError(
                f"replay: {len(failed)} message(s) were not acknowledged by {bootstrap_servers}; "
                f"first error: {failed[0].exception!r}"
            )
    finally:
        gc.unfreeze()
        bar.close()
        producer.close(timeout=flush_timeout_s)
    seconds = time.monotonic() - start
    result = ReplayResult(n, sent_labels + trailing, trailing, seconds)
    log.info(
        "replayed %d transactions and %d labels in %.1f s (%.0f tx/s)",
        result.transactions,
        result.labels,
        seconds,
        result.rate,
    )
    return result


def _wait_until(start: float, index: int, event_offset_s: int, pacing: Pacing) -> None:
    if pacing.rate is not None:
        due = start + index / pacing.rate
    elif pacing.speedup is not None:
        due = start + event_offset_s / pacing.speedup
    else:
        return
    delay = due - time.monotonic()
    if delay > 0.001:  # shorter sleeps cost more than they pace
        time.sleep(delay)


# Under a rate source, messages go out up to this early, i.e. in bursts of this much traffic. At
# the demo's slow rate (100 tx/s) single sends make one-record batches, which Tansu stores and
# serves one per fetch: the consumer then fell minutes behind on the labels topic. A producer
# linger would batch too, but its wait would count in every transaction's end-to-end latency.
_BURST_S = 0.1


def _wait_dynamic(due: float, rate: float) -> float:
    """Sleep until ``due`` unless it is under ``_BURST_S`` away; returns when the next message
    is due at ``rate``."""
    now = time.monotonic()
    if due - now > _BURST_S:
        time.sleep(due - now)
    # After a stall, do not burst to catch up: pace from now on.
    return max(due, now - 1.0) + 1.0 / rate


def _drop_done(futures: list[Any]) -> list[Any]:
    """Keep only unfinished sends (and failures, to report them) so memory stays bounded."""
    return [f for f in futures if not f.is_done or f.failed()]


def _tx_values(df: Any, format_timestamps: Any) -> list[bytes]:
    cols = {f: df[f] for f in c.LIVE_FIELDS}
    cols[c.TIMESTAMP] = format_timestamps(df[c.TIMESTAMP])
    return _json_rows(cols, c.LIVE_FIELDS)


def _label_values(df: Any, format_timestamps: Any) -> list[bytes]:
    cols = {f: df[f] for f in LABEL_FIELDS}
    cols[c.TIMESTAMP] = format_timestamps(df[c.TIMESTAMP])
    cols[c.LABEL_AVAILABLE_AT] = format_timestamps(df[c.LABEL_AVAILABLE_AT])
    return _json_rows(cols, LABEL_FIELDS)


def _json_rows(cols: dict[str, Any], names: tuple[str, ...]) -> list[bytes]:
    lists = [cols[name].tolist() for name in names]
    return [encode(dict(zip(names, values, strict=True))) for values in zip(*lists, strict=True)]
