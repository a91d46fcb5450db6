"""The scoring consumer's settings (``ConsumerConfig``) and its run's counts (``ConsumerSummary``).

Shared by the consumer loop (streaming.consumer) and its stages; ``streaming.consumer`` exports
both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from core import contract as c
from core.settings import Topics
from streaming import messages as m
from streaming.kafka_config import KafkaSecurity
from streaming.state import DEFAULT_MAX_PENDING_LABELS, DEFAULT_RECENT_IDS


@dataclass(frozen=True)
class ConsumerConfig:
    bootstrap_servers: str
    group_id: str = "fraud-scoring"
    topics: Topics = field(default_factory=Topics)
    state_dir: Path = Path("runs/stream")
    model_name: str = "fraud"
    batch_size: int = 1000
    poll_timeout_ms: int = 200
    max_messages: int | None = None
    exit_when_idle_s: float | None = None
    # Seconds between feature snapshots (0: after every commit). Encoding every partition's
    # state takes tens of ms, which after every batch would cost throughput and add to the
    # latency of the next batch; with an interval, a restart re-reads
    # the messages between the snapshot and the committed offset through the feature engine
    # only (no scoring, no output), so features stay exact and duplicates stay <= one batch.
    snapshot_interval_s: float = 2.0
    include_features: bool = False
    label_delay_days: int = c.DEFAULT_LABEL_DELAY_DAYS
    # How far (seconds) one transaction may move its partition's event time beyond the newest
    # accepted one, plus however far the log clock (Kafka record timestamps) moved since that
    # one: longer than any quiet gap of one partition of a live card stream, shorter than the
    # label delay and the customer windows, so no accepted jump can empty the windows or apply
    # every pending label at once. See ``fetch_stage.Intake``.
    max_event_time_skew_s: float = float(c.SECONDS_PER_DAY)
    # Messages whose key plus value exceed this are dead-lettered without being decoded.
    max_message_bytes: int = m.DEFAULT_MAX_MESSAGE_BYTES
    # Bytes of the original key and of the value a dead letter carries (see messages).
    dead_letter_max_payload_bytes: int = m.DEFAULT_DEAD_LETTER_MAX_PAYLOAD_BYTES
    # How long a batch may wait for the model server before that is an incident (logged as an
    # error and counted); the batch keeps being retried after it, nothing is dropped.
    lag_bound_s: float = 60.0
    # A card authorisation cannot wait for a model server that is down: a transaction held
    # this long gets ``fallback_decision`` (marked as a fallback, counted) and is re-scored
    # once the server answers, the re-score going to the decisions topic as a correction.
    # The model calls keep to it too. None: hold without a deadline.
    decision_deadline_s: float | None = 2.0
    fallback_decision: str = c.REVIEW
    # Fallback-decided transactions kept for their re-score (about 1.5 KB each). Beyond it the
    # consumer stops taking new batches and holds, as without a deadline: nothing is dropped.
    max_fallback_backlog: int = 100_000
    # Per partition: labels held until their availability (streaming.state), and the
    # transaction ids remembered to skip identical re-sends and dead-letter conflicting ones.
    max_pending_labels: int = DEFAULT_MAX_PENDING_LABELS
    recent_ids: int = DEFAULT_RECENT_IDS
    retry_initial_s: float = 0.2
    retry_max_s: float = 5.0
    write_dataset: bool = True
    fsync_snapshots: bool = True
    session_timeout_ms: int = 10_000
    heartbeat_interval_ms: int = 3_000
    # How long the broker may hold a transactions fetch. Apache Kafka answers as soon as data
    # is there, but Tansu reads once and, finding nothing, sleeps the whole fetch.max.wait.ms
    # and answers empty: a record arriving meanwhile waits out the hold and the next fetch, so
    # on Tansu this wait is latency (a probe consumer's delivery p99 was 54 ms at 100 ms and
    # 10 ms at 20 ms). A fetch that finds records is answered at once (median 3.8 ms at
    # 500 tx/s). Tansu also answers empty when finding the offset takes longer than the wait
    # (partitions of very many small batches): below ~5 ms it starts doing so. On Apache Kafka,
    # raise it to save idle fetches.
    fetch_max_wait_ms: int = 10
    # The same for the labels reader's fetch (the barrier waits for it when labels arrive).
    labels_fetch_max_wait_ms: int = 10
    # A poll plus batch taking this long is logged with the time of each stage.
    slow_batch_s: float = 1.0
    # Seconds between full garbage collections, see GcPolicy. Each one stops the loop for the
    # time it takes to traverse every object in the process (30-150 ms).
    gc_full_interval_s: float = 300.0
    security: KafkaSecurity | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"consumer: batch size must be >= 1, got {self.batch_size}")
        if self.max_messages is not None and self.max_messages < 1:
            raise ValueError(f"consumer: max messages must be >= 1, got {self.max_messages}")
        if self.decision_deadline_s is not None and not self.decision_deadline_s > 0:
            raise ValueError(
                "consumer: decision deadline must be > 0 s (it is the model call's time), "
                f"got {self.decision_deadline_s}"
            )
        if self.fallback_decision not in c.DECISIONS:
            raise ValueError(
                f"consumer: fallback decision {self.fallback_decision!r} is not one of "
                f"{', '.join(c.DECISIONS)}"
            )
        if self.max_fallback_backlog < 0:
            raise ValueError(
                f"consumer: max fallback backlog must be >= 0, got {self.max_fallback_backlog}"
            )
        if self.snapshot_interval_s < 0:
            raise ValueError("consumer: snapshot interval must be >= 0")
        if self.gc_full_interval_s <= 0:
            raise ValueError(
                f"consumer: gc full interval must be > 0 s, got {self.gc_full_interval_s}"
            )
        for name in ("fetch_max_wait_ms", "labels_fetch_max_wait_ms"):
            # Tansu answers a fetch with a zero wait before reading anything: never any data.
            if getattr(self, name) < 1:
                raise ValueError(f"consumer: {name} must be >= 1, got {getattr(self, name)}")
        if not 0 < self.max_event_time_skew_s < math.inf:
            raise ValueError(
                f"consumer: max event time skew must be > 0 s, got {self.max_event_time_skew_s}"
            )
        if self.max_message_bytes < 1:
            raise ValueError(
                f"consumer: max message bytes must be >= 1, got {self.max_message_bytes}"
            )
        if self.dead_letter_max_payload_bytes < 0:
            raise ValueError(
                "consumer: dead letter max payload bytes must be >= 0, got "
                f"{self.dead_letter_max_payload_bytes}"
            )


@dataclass
class ConsumerSummary:
    consumed: int = 0
    decided: int = 0
    dead_lettered: int = 0
    replayed_for_state: int = 0
    batches: int = 0
    alerts: int = 0
    seconds: float = 0.0
    aborted_batches: int = 0
    repeats_skipped: int = 0  # identical re-sends of a transaction already decided
    # Monotonic times of the first batch received and the last batch committed: their
    # difference is the busy time, excluding group joins and idle waits (for throughput).
    first_batch_at: float | None = None
    last_commit_at: float | None = None

    @property
    def active_seconds(self) -> float:
        if self.first_batch_at is None or self.last_commit_at is None:
            return 0.0
        return self.last_commit_at - self.first_batch_at

    def describe(self) -> str:
        return (
            f"consumed {self.consumed:,} transactions in {self.batches:,} batches "
            f"({self.decided:,} decided, {self.alerts:,} alerts, {self.dead_lettered:,} "
            f"dead-lettered, {self.replayed_for_state:,} re-read for state) in "
            f"{self.seconds:.1f} s"
        )
